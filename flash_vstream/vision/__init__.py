"""Frozen vision encoders and their frame preprocessing."""

from flash_vstream.vision.clip import (
    CLIP_VISION_PRESETS,
    CLIPFrameProcessor,
    CLIPVisionEncoder,
    clip_vision_config,
)

__all__ = ["CLIP_VISION_PRESETS", "CLIPFrameProcessor", "CLIPVisionEncoder", "clip_vision_config"]
