"""Frozen vision encoders and their frame preprocessing.

Names are imported on first use, so that importing a submodule (e.g. ``vision.features`` from the memories) does not
pull in transformers' CLIP modelling.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CLIP_VISION_PRESETS": "flash_vstream.vision.clip",
    "CLIPFrameProcessor": "flash_vstream.vision.clip",
    "CLIPVisionEncoder": "flash_vstream.vision.clip",
    "clip_vision_config": "flash_vstream.vision.clip",
    "DualResFeatures": "flash_vstream.vision.features",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flash_vstream.vision' has no attribute {name!r}")
