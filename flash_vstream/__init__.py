"""flash-vstream: real-time understanding of long and live video streams with memory-based video-language models.

Public API:

- :func:`load_model` -> :class:`FlashVStream` (``answer(question, video=... | frames=... | features=...)``);
- :class:`StreamSession`: a live stream's frames in, answers at any moment out (``push_frames``/``ask``);
- configs :class:`FlashVStreamConfig` (STAR family) and the released-layout :class:`VStreamLegacyConfig`;
- :class:`FlashVStreamForCausalLM`, the STAR-family Hugging Face model;
- :func:`register_auto_classes`, which registers the STAR configs and model with transformers' Auto classes, so
  ``AutoModelForCausalLM.from_pretrained(dir)`` loads STAR checkpoints (``load_model`` calls it for you).

Importing the package has no side effects and imports nothing heavy: each name is imported on first use, so the
``flash-vstream`` command answers ``--help`` at once.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Answer": "flash_vstream.inference.pipeline",
    "FlashVStream": "flash_vstream.inference.pipeline",
    "load_model": "flash_vstream.inference.pipeline",
    "StreamSession": "flash_vstream.inference.streaming",
    "FlashVStreamConfig": "flash_vstream.config",
    "VStreamLegacyConfig": "flash_vstream.config",
    "FlashVStreamForCausalLM": "flash_vstream.model.modeling",
    "register_auto_classes": "flash_vstream.model.auto",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flash_vstream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
