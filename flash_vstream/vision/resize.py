"""Frame resizing in torch, on any device, matching Pillow's bicubic resize to within one 8-bit level.

The frame processors resize with Pillow on the CPU (pixel-identical to transformers' processors). On a GPU the
same resize is one batched ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``: with
``antialias=True`` torch uses Pillow's filter (Keys' cubic with ``a = -0.5``, its support widened by the
down-scaling factor), so the two agree to within one 8-bit level. They are not bit-identical: Pillow rounds to
8 bits in fixed point, torch in floats (both passes are done as Pillow does them: horizontal, 8-bit clip, vertical).

Shapes: t frames, c channels (3), h/w pixels.
"""

from __future__ import annotations

import PIL
import torch
import torch.nn.functional as F

__all__ = ["GPU_BATCH_FRAMES", "as_frame_tensor", "resize_uint8_like_pil"]

GPU_BATCH_FRAMES = 32
"""Frames resized per ``interpolate`` call: bounds the float copy of a batch (32 frames of 720p: 354 MB)."""


def as_frame_tensor(frames, device: torch.device | str | None) -> torch.Tensor:
    """uint8 ``(t, h, w, 3)`` frames (numpy or torch) as a torch tensor on ``device`` (default: where they are).

    Raises:
        ValueError: for another dtype or shape.
    """
    tensor = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(frames)
    if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[-1] != 3 or tensor.shape[0] == 0:
        raise ValueError(
            f"frames must be a non-empty uint8 array (T, H, W, 3); got {tensor.dtype} {tuple(tensor.shape)}"
        )
    return tensor if device is None else tensor.to(device, non_blocking=True)


def resize_uint8_like_pil(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic-resize ``(t, c, h, w)`` float frames holding 0-255 values to ``size = (height, width)``.

    Returns:
        ``(t, c, height, width)`` float32, rounded and clipped to 0-255 as Pillow's 8-bit output is; the input
        itself (as float32) when ``size`` is its size, since Pillow copies such an image unchanged.
    """
    frames = frames.float()
    return torch.cat([_resize_batch(batch, tuple(size)) for batch in frames.split(GPU_BATCH_FRAMES)])


def _resize_batch(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's two passes, each rounded and clipped to 8 bits, in Pillow's order (each skipped when not needed).

    The 8-bit clip between the passes matters: bicubic overshoots at sharp edges, and Pillow clips the
    overshoot before the second pass sees it. Pillow 13 runs the vertical pass first when the height shrinks by
    more than twice as many pixels as the width does; earlier versions always run the horizontal pass first.
    """
    height, width = frames.shape[-2:]
    shrink_h, shrink_w = height - size[0], width - size[1]
    vertical_first = _pillow_major() >= 13 and shrink_h > 0 and shrink_h > 2 * shrink_w
    passes = [(size[0], width), size] if vertical_first else [(height, size[1]), size]
    for step in passes:
        if tuple(frames.shape[-2:]) != tuple(step):
            frames = F.interpolate(frames, size=step, mode="bicubic", antialias=True, align_corners=False)
            frames = frames.round_().clamp_(0, 255)
    return frames


def _pillow_major() -> int:
    """The installed Pillow's major version (its pass order is what the torch path reproduces)."""
    return int(PIL.__version__.split(".")[0])
