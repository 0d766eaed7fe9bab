"""Registration of the families with transformers' Auto classes.

After ``flash_vstream.register_auto_classes()`` (``load_model`` calls it), ``AutoModelForCausalLM.from_pretrained(dir)``
loads both the project's own STAR checkpoints and released Flash-VStream-7b directories, and
``AutoModelForImageTextToText.from_pretrained(dir)`` loads the project's own Flash checkpoints.

Registration is the public transformers API (``AutoConfig.register`` / ``AutoModelForCausalLM.register``), not a
patch; it is idempotent.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from flash_vstream.config import FlashVStreamConfig, VStreamLegacyConfig


class ReleasedFlashVStreamLoader:
    """Auto-class entry for ``model_type="vstream"``.

    Converts the released layout and returns a strictly loaded ``FlashVStreamForCausalLM``; it is a loader, not a
    model class of its own.
    """

    config_class = VStreamLegacyConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, dtype=None, torch_dtype=None, **kwargs):
        import torch

        from flash_vstream.model.checkpoints import load_star_model
        from flash_vstream.model.loading import resolve_checkpoint

        path = Path(resolve_checkpoint(pretrained_model_name_or_path))
        dtype = dtype or torch_dtype or torch.float32
        if dtype == "auto":  # the dtype the checkpoint was saved in (bf16 for the released weights)
            saved = json.loads((path / "config.json").read_text())
            dtype = saved.get("dtype") or saved.get("torch_dtype") or "float32"
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        return load_star_model(path, dtype=dtype)


def register_auto_classes() -> None:
    """Register every family's configs and models with transformers' Auto classes (idempotent).

    STAR: ``AutoModelForCausalLM``; Flash on Qwen2-VL / Qwen2.5-VL: ``AutoModelForImageTextToText``.
    """
    from transformers import AutoModelForImageTextToText

    from flash_vstream.model.modeling import FlashVStreamForCausalLM
    from flash_vstream.model.qwen2vl import BACKBONES

    AutoConfig.register("flash_vstream", FlashVStreamConfig, exist_ok=True)
    AutoConfig.register("vstream", VStreamLegacyConfig, exist_ok=True)
    AutoModelForCausalLM.register(FlashVStreamConfig, FlashVStreamForCausalLM, exist_ok=True)
    AutoModelForCausalLM.register(VStreamLegacyConfig, ReleasedFlashVStreamLoader, exist_ok=True)
    for backbone in BACKBONES:
        AutoConfig.register(backbone.model_type, backbone.config_class, exist_ok=True)
        AutoModelForImageTextToText.register(backbone.config_class, backbone.model_class, exist_ok=True)
