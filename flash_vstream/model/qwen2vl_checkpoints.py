"""Strict loading of Flash-VStream-Qwen and plain Qwen2-VL checkpoints into the Flash family.

Layouts handled (dispatch on the checkpoint's own ``model_type`` and key names, never on its path):

- the published Flash-VStream-Qwen layout: ``model_type "flash_vstream_qwen2_vl"``,
  ``vision_config.flash_memory_config``, keys in transformers 4.45 naming (``visual.*``, ``model.layers.*``,
  ``model.embed_tokens.*``, ``model.norm.*``, ``lm_head.*``), safetensors or ``.bin`` (sharded or not);
- plain ``Qwen2-VL`` checkpoints (``model_type "qwen2_vl"``, same keys), which get the Flash Memory defaults;
- this project's own ``save_pretrained`` output (transformers 5.x naming: ``model.visual.*``,
  ``model.language_model.*``).

Why an explicit key map: transformers 5.x looks conversion rules up by class name, and skips them for classes
defined outside transformers, so a Qwen2-VL subclass silently gets a randomly initialised language model
(reference ``benchmarks-and-ecosystem.md`` §6.1). We pass the map ourselves (``key_mapping=``) and fail on any
missing, unexpected or mis-shaped key, naming them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from flash_vstream.model.qwen2vl import (
    FlashVStreamQwen2VLConfig,
    FlashVStreamQwen2VLForConditionalGeneration,
    flash_memory_config,
)

FLASH_MODEL_TYPES = ("flash_vstream_qwen2_vl", "qwen2_vl")

# transformers 4.45 (published) key -> 5.x module path, applied in order by ``from_pretrained(key_mapping=)``.
LEGACY_TO_MODULE = {
    r"^visual\.": "model.visual.",
    r"^model\.(?!visual\.|language_model\.)": "model.language_model.",
}
# 5.x module path -> 4.45 key, for writing the published layout.
MODULE_TO_LEGACY = {
    r"^model\.visual\.": "visual.",
    r"^model\.language_model\.": "model.",
}


def to_published_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a model's ``state_dict`` keys to the published transformers-4.45 names."""
    return {_rename(key, MODULE_TO_LEGACY): value for key, value in state.items()}


def _rename(key: str, table: dict[str, str]) -> str:
    for pattern, replacement in table.items():
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return key


def checkpoint_keys(path: Path) -> list[str]:
    """Tensor names stored in a checkpoint directory, without loading the tensors (except ``.bin``).

    Raises:
        FileNotFoundError: when the directory holds no safetensors or ``.bin`` weights.
    """
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index_name).is_file():
            return sorted(json.loads((path / index_name).read_text())["weight_map"])
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
            return sorted(handle.keys())
    if (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True)
        return sorted(state)
    raise FileNotFoundError(
        f"{path} holds no weights (model.safetensors, pytorch_model.bin or a sharded index); "
        f"is it a Qwen2-VL checkpoint directory?"
    )


def uses_legacy_keys(keys: list[str]) -> bool:
    """True for transformers-4.45 names (published), False for 5.x names (this project's saves).

    Raises:
        ValueError: when the keys fit neither Qwen2-VL layout.
    """
    legacy = any(k.startswith("visual.") for k in keys) or any(k.startswith("model.layers.") for k in keys)
    modern = any(k.startswith(("model.visual.", "model.language_model.")) for k in keys)
    if legacy == modern:
        sample = ", ".join(keys[:5])
        raise ValueError(
            f"checkpoint keys fit neither the published Qwen2-VL layout (visual.*, model.layers.*) nor the "
            f"transformers 5.x one (model.visual.*, model.language_model.*); first keys: {sample}"
        )
    return legacy


def build_config(path: Path, **overrides) -> FlashVStreamQwen2VLConfig:
    """The Flash config of a Flash-VStream-Qwen or plain Qwen2-VL checkpoint (memory defaults for the latter).

    Args:
        path: checkpoint directory.
        **overrides: top-level config fields to set, e.g. ``rope_mode="reference"``.

    Raises:
        ValueError: for another ``model_type`` or an invalid memory config (naming the field).
    """
    raw = json.loads((path / "config.json").read_text())
    model_type = raw.pop("model_type", None)
    if model_type not in FLASH_MODEL_TYPES:
        raise ValueError(f"{path} has model_type {model_type!r}; the Flash family loads {FLASH_MODEL_TYPES}")
    raw.pop("architectures", None)
    raw.pop("transformers_version", None)
    config = FlashVStreamQwen2VLConfig(**{**raw, **overrides})  # validates memory settings and rope_mode
    config.vision_config.flash_memory_config = flash_memory_config(config).to_published()
    return config


def load_flash_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **config_overrides,
) -> FlashVStreamQwen2VLForConditionalGeneration:
    """Load the model of a checkpoint directory strictly.

    Raises:
        ValueError: naming every missing, unexpected or mis-shaped key.
    """
    path = Path(path)
    config = build_config(path, **config_overrides)
    key_mapping = LEGACY_TO_MODULE if uses_legacy_keys(checkpoint_keys(path)) else None
    model, info = FlashVStreamQwen2VLForConditionalGeneration.from_pretrained(
        path, config=config, dtype=dtype, key_mapping=key_mapping, output_loading_info=True
    )
    problems = {
        "missing": sorted(info.get("missing_keys", [])),
        "unexpected": sorted(info.get("unexpected_keys", [])),
        "mis-shaped": sorted(str(k) for k in info.get("mismatched_keys", [])),
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        detail = "; ".join(f"{kind} keys: {', '.join(keys)}" for kind, keys in problems.items())
        raise ValueError(
            f"checkpoint {path} does not match the Qwen2-VL layout ({detail}). Rename the keys to the published "
            f"names (visual.*, model.layers.*, lm_head.*) or re-save with save_pretrained."
        )
    return model.to(device).eval()


def load_flash_checkpoint(path: Path, *, device: torch.device, dtype: torch.dtype, **config_overrides):
    """Registry entry point: a ready :class:`~flash_vstream.inference.pipeline.FlashVStream` for the checkpoint.

    Args:
        path: checkpoint directory (with its tokenizer).
        device: where to put the model.
        dtype: weights dtype.
        **config_overrides: e.g. ``rope_mode="reference"`` to evaluate released weights as published.
    """
    from transformers import AutoTokenizer

    from flash_vstream.inference.options import validate_options
    from flash_vstream.inference.pipeline import FlashVStream
    from flash_vstream.inference.qwen2vl_inputs import FlashInputBuilder
    from flash_vstream.video import FrameSampler

    validate_options("flash", config_overrides, where="load_model options")
    model = load_flash_model(path, device=device, dtype=dtype, **config_overrides)
    tokenizer = AutoTokenizer.from_pretrained(path)
    builder = FlashInputBuilder.for_model(model, tokenizer)
    # The published evaluation: frames at 1 fps, at most 240 of them, uniformly (reference §7.3).
    sampler = FrameSampler(policy="fps", target_fps=1.0, min_frames=1, max_frames=240)
    return FlashVStream(model, tokenizer, builder, sampler, builder.count_visual_tokens)
