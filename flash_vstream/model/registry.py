"""Which loader builds a model from a checkpoint directory, keyed by the checkpoint's own ``model_type``.

``load_model`` reads ``config.json`` and dispatches here; it never looks at substrings of a path. Loaders are named
as ``"module:function"`` strings and imported on first use, so importing :mod:`flash_vstream` stays cheap and free of
side effects, and a family's heavy imports happen only when one of its checkpoints is loaded.

A loader has the signature ``(path: Path, *, device, dtype) -> FlashVStream``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

_LOADERS: dict[str, str] = {
    # STAR family: the released Flash-VStream-7b layout (flat LLaMA config) and this project's own format.
    "vstream": "flash_vstream.model.checkpoints:load_star_checkpoint",
    "flash_vstream": "flash_vstream.model.checkpoints:load_star_checkpoint",
    # Flash Memory family: the published Flash-VStream-Qwen layout and plain Qwen2-VL checkpoints.
    "flash_vstream_qwen2_vl": "flash_vstream.model.qwen2vl_checkpoints:load_flash_checkpoint",
    "qwen2_vl": "flash_vstream.model.qwen2vl_checkpoints:load_flash_checkpoint",
}


def register_loader(model_type: str, target: str) -> None:
    """Register (or replace) the loader for ``model_type``; ``target`` is ``"module:function"``."""
    if ":" not in target:
        raise ValueError(f"loader target must look like 'package.module:function', got {target!r}")
    _LOADERS[model_type] = target


def supported_model_types() -> list[str]:
    return sorted(_LOADERS)


def get_loader(model_type: str) -> Callable:
    """Return the loader function for ``model_type``.

    Raises:
        ValueError: when no family handles ``model_type``; the message lists the supported types.
    """
    if model_type not in _LOADERS:
        raise ValueError(
            f"checkpoint has model_type {model_type!r}, which flash-vstream cannot load; supported model types: "
            f"{', '.join(supported_model_types())}. Point --model at a Flash-VStream or Qwen2-VL checkpoint."
        )
    module_name, function_name = _LOADERS[model_type].split(":")
    return getattr(importlib.import_module(module_name), function_name)
