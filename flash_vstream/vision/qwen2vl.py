"""Frames to Qwen-VL pixel patches, and a dual-resolution pass through transformers' own Qwen-VL vision towers.

Flash Memory needs two views of every temporal patch (two consecutive frames):

- the full-resolution pre-merger ViT tokens ``x_H`` (``h*w`` tokens of a ``h x w`` patch grid), and
- the pre-merger tokens ``x_L`` of the same pixels average-pooled 2x2 *before* the ViT (``h/2*w/2`` tokens).

Both go through the same ViT in one call: attention never crosses a temporal patch (Qwen2-VL) or a window of
one clip (Qwen2.5-VL), so the two resolutions never mix. The published Flash-VStream-Qwen code pools pixels
before the encoder (its paper figure draws the pool after it); we follow the code.

The ViT is transformers' own tower, run through its own ``forward``: :func:`pre_merger_tokens` takes the
tower's ``last_hidden_state`` (the tokens before the patch merger) and, for Qwen2.5-VL, whose blocks run in
*window order*, puts the tokens back in spatial order with the same window index the tower used
(``transformers.vision_utils.get_vision_window_index``). The model applies the tower's ``merger`` to what the
memory keeps. Which towers need that permutation is a table keyed by ``vision_config.model_type``.

Frames are resized with ``smart_resize`` twice, as the published pipeline does: first with factor 28 under
``max_pixels`` (the frame loader), then with factor ``patch * merge * pool = 56`` (the image processor), so
the patch grid is a multiple of 4 and the half-resolution grid still tiles into 2x2 merge windows. An odd
frame count is padded by repeating the last frame (two frames form one temporal patch). Qwen2-VL and
Qwen2.5-VL share the patch layout and the normalisation, so one processor serves both. With ``device`` set (or
frames already on a GPU) the two resizes and the normalisation run batched in torch on that device
(:mod:`flash_vstream.vision.resize`), within one 8-bit level of the Pillow path (two resizes in a row can
compound to two levels, at about one value in a million).

Shapes: t: temporal patches, h/w: patch grid of a frame (pixels / 14), d: ViT width, p: patch size (14),
m: spatial merge size (2), tp: temporal patch size (2), c: channels (3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers.vision_utils import get_vision_window_index

from flash_vstream.vision.features import DualResFeatures
from flash_vstream.vision.resize import as_frame_tensor, resize_uint8_like_pil

# Normalisation of the Qwen2-VL image processor (the OpenAI CLIP statistics).
QWEN2VL_MEAN = (0.48145466, 0.4578275, 0.40821073)
QWEN2VL_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, area in ``[min_pixels, max_pixels]``.

    Aspect ratio is kept as closely as the rounding allows (Python ``round``, i.e. half-to-even, as upstream).

    Raises:
        ValueError: for an aspect ratio above 200 (the upstream limit).
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frame aspect ratio {height}x{width} is above 200; crop the video first")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class FlashFrameProcessor:
    """Turns sampled RGB frames into Qwen2-VL video patches sized for Flash Memory's two resolutions.

    >>> proc = FlashFrameProcessor()
    >>> proc.frame_size(720, 1280)
    (336, 560)
    """

    max_pixels: int = 4 * 224 * 224
    """Pixel budget per frame (published default 200704 = 448x448)."""

    min_pixels: int = 56 * 56
    """Smallest frame area after resizing (the Qwen2-VL processor default)."""

    patch_size: int = 14
    """ViT patch side in pixels (``vision_config.patch_size``)."""

    merge_size: int = 2
    """Patch-merger window side (``vision_config.spatial_merge_size``)."""

    temporal_patch_size: int = 2
    """Frames per temporal patch (``vision_config.temporal_patch_size``)."""

    pool_size: int = 2
    """Pixel down-sampling of the half-resolution pathway (``flash_memory_temporal_poolsize``)."""

    loader_factor: int = 28
    """Factor of the first resize, done by the published frame loader before the processor's own resize."""

    device: str | None = None
    """Where to resize and normalise: None (Pillow on the CPU; frames already on a GPU are processed there) or a
    torch device such as "cuda" (torch there; the patches stay on it)."""

    def __post_init__(self) -> None:
        for name in (
            "max_pixels",
            "min_pixels",
            "patch_size",
            "merge_size",
            "temporal_patch_size",
            "pool_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"FlashFrameProcessor.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"FlashFrameProcessor.min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels})"
            )
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(f"FlashFrameProcessor.device={self.device!r} is not a torch device") from err

    @property
    def factor(self) -> int:
        """Side multiple of a resized frame: patch x merge x pool (56 by default)."""
        return self.patch_size * self.merge_size * self.pool_size

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` a ``height x width`` frame is resized to (two-stage, as published)."""
        h1, w1 = smart_resize(height, width, self.loader_factor, self.min_pixels, self.max_pixels)
        return smart_resize(h1, w1, self.factor, self.min_pixels, self.max_pixels)

    def grid_thw(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Full-resolution ``(t, h, w)`` patch grid of a clip, without decoding any pixel."""
        rh, rw = self.frame_size(height, width)
        t = -(-num_frames // self.temporal_patch_size)  # odd counts are padded up
        return t, rh // self.patch_size, rw // self.patch_size

    def __call__(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Resize, normalise and patchify one clip.

        Args:
            frames: uint8 ``(T, H, W, 3)`` RGB frames, ``T >= 1`` (numpy, or torch on any device).

        Returns:
            ``pixel_values_videos`` float32 ``(t*h*w, c*tp*p*p)`` (on the torch path's device, else the CPU) and
            ``video_grid_thw`` int64 ``(1, 3)`` on the CPU.

        Raises:
            ValueError: when ``frames`` is not a non-empty uint8 ``(T, H, W, 3)`` array.
        """
        on_gpu = isinstance(frames, torch.Tensor) and frames.device.type != "cpu"
        if self.device is not None or on_gpu:
            video = self._resize_torch(as_frame_tensor(frames, self.device))  # (T, c, H', W') 0-255
        else:
            frames = np.asarray(frames)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0 or frames.dtype != np.uint8:
                raise ValueError(
                    f"frames must be a non-empty uint8 array (T, H, W, 3); got {frames.dtype} {frames.shape}"
                )
            video = torch.from_numpy(np.stack([self._resize(f) for f in frames]))  # (T, H', W', 3) uint8
            video = video.permute(0, 3, 1, 2).float()  # (T, c, H', W') 0-255
        remainder = video.shape[0] % self.temporal_patch_size
        if remainder:  # pad by repeating the last frame, as the published loader does
            pad = video[-1:].expand(self.temporal_patch_size - remainder, -1, -1, -1)
            video = torch.cat([video, pad])
        video = video / 255.0
        mean = torch.tensor(QWEN2VL_MEAN, device=video.device).view(1, 3, 1, 1)
        std = torch.tensor(QWEN2VL_STD, device=video.device).view(1, 3, 1, 1)
        video = (video - mean) / std
        t = video.shape[0] // self.temporal_patch_size
        volume = video.view(t, self.temporal_patch_size, *video.shape[1:]).transpose(1, 2)  # (t, c, tp, H', W')
        patches = patchify(volume, self.patch_size, self.merge_size)
        grid = torch.tensor([[t, volume.shape[-2] // self.patch_size, volume.shape[-1] // self.patch_size]])
        return patches, grid

    def _resize_torch(self, frames: torch.Tensor) -> torch.Tensor:
        """``(T, H, W, 3)`` uint8 -> ``(T, c, H', W')`` float 0-255: both resizes in torch, each to 8 bits."""
        height, width = frames.shape[1:3]
        h1, w1 = smart_resize(height, width, self.loader_factor, self.min_pixels, self.max_pixels)
        h2, w2 = smart_resize(h1, w1, self.factor, self.min_pixels, self.max_pixels)
        video = frames.permute(0, 3, 1, 2)  # (T, c, H, W)
        return resize_uint8_like_pil(resize_uint8_like_pil(video, (h1, w1)), (h2, w2))

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        """Bicubic resize to the loader's size, then to the processor's size (no-op resizes skipped)."""
        height, width = frame.shape[:2]
        h1, w1 = smart_resize(height, width, self.loader_factor, self.min_pixels, self.max_pixels)
        h2, w2 = smart_resize(h1, w1, self.factor, self.min_pixels, self.max_pixels)
        image = Image.fromarray(frame)
        if (h1, w1) != (height, width):
            image = image.resize((w1, h1), Image.BICUBIC)
        if (h2, w2) != (h1, w1):
            image = image.resize((w2, h2), Image.BICUBIC)
        return np.asarray(image)


def patchify(volume: torch.Tensor, patch_size: int, merge_size: int) -> torch.Tensor:
    """``(t, c, tp, H, W)`` pixels -> ``(t*h*w, c*tp*p*p)`` patches in Qwen2-VL order."""
    t, c, tp, height, width = volume.shape
    h, w = height // patch_size, width // patch_size
    m, p = merge_size, patch_size
    x = volume.reshape(t, c, tp, h // m, m, p, w // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 1, 2, 5, 8)  # (t, h/m, w/m, m, m, c, tp, p, p)
    return x.reshape(t * h * w, c * tp * p * p)


def unpatchify(
    patches: torch.Tensor, grid_thw: tuple[int, int, int], patch_size: int, merge_size: int, channels: int = 3
) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(t*h*w, c*tp*p*p)`` -> ``(t, c, tp, h*p, w*p)``."""
    t, h, w = grid_thw
    m, p = merge_size, patch_size
    tp = patches.shape[1] // (channels * p * p)
    x = patches.reshape(t, h // m, w // m, m, m, channels, tp, p, p)
    x = x.permute(0, 5, 6, 1, 3, 7, 2, 4, 8)  # (t, c, tp, h/m, m, p, w/m, m, p)
    return x.reshape(t, channels, tp, h * p, w * p)


def downsample_patches(
    patches: torch.Tensor, grid_thw: tuple[int, int, int], pool: int, patch_size: int, merge_size: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Average-pool the pixels of one clip's patches by ``pool`` and re-patchify (the half-resolution input).

    Returns:
        ``(t*(h/pool)*(w/pool), c*tp*p*p)`` patches and their grid ``(t, h/pool, w/pool)``.

    Raises:
        ValueError: when the grid is not a multiple of ``merge_size * pool`` (frames were not resized with
            factor 56).
    """
    t, h, w = grid_thw
    if h % (merge_size * pool) or w % (merge_size * pool):
        raise ValueError(
            f"patch grid {h}x{w} is not a multiple of merge*pool={merge_size * pool}; resize frames with "
            f"FlashFrameProcessor (factor patch*merge*pool)"
        )
    volume = unpatchify(patches, grid_thw, patch_size, merge_size)  # (t, c, tp, H, W)
    _, c, tp, height, width = volume.shape
    pooled = torch.nn.functional.avg_pool2d(volume.reshape(t, c * tp, height, width), pool)
    pooled = pooled.reshape(t, c, tp, height // pool, width // pool)
    return patchify(pooled, patch_size, merge_size), (t, h // pool, w // pool)


# vision_config.model_type -> whether the tower's blocks run in window order (Qwen2.5-VL's windowed attention).
WINDOW_ORDERED_TOWERS = {"qwen2_vl_vision": False, "qwen2_5_vl_vision": True}


def pre_merger_tokens(tower: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Pre-merger ViT tokens in spatial (input) order, from the tower's own ``forward``.

    Args:
        tower: transformers' ``Qwen2VisionTransformerPretrainedModel`` or
            ``Qwen2_5_VisionTransformerPretrainedModel``.
        pixel_values: ``(sum t*h*w, c*tp*p*p)`` patches of one or more clips.
        grid_thw: ``(num_clips, 3)`` grids.

    Returns:
        ``(sum t*h*w, d)`` tokens in the order of ``pixel_values`` (merge windows contiguous), so that
        ``tower.merger(tokens)`` equals the tower's own ``pooler_output``.

    Raises:
        ValueError: for a tower whose ``config.model_type`` is not in :data:`WINDOW_ORDERED_TOWERS`.
    """
    kind = tower.config.model_type
    if kind not in WINDOW_ORDERED_TOWERS:
        raise ValueError(
            f"vision tower type {kind!r} is not supported; Flash Memory runs on {sorted(WINDOW_ORDERED_TOWERS)}"
        )
    tokens = tower(pixel_values.to(tower.dtype), grid_thw=grid_thw).last_hidden_state
    if not WINDOW_ORDERED_TOWERS[kind]:
        return tokens
    # The tower permuted whole merge units (m*m tokens) into window order; invert that permutation.
    window_index, _ = get_vision_window_index(
        grid_thw,
        spatial_merge_size=tower.spatial_merge_size,
        window_size=tower.window_size,
        patch_size=tower.patch_size,
    )
    unit = tower.spatial_merge_size**2
    reverse = torch.argsort(window_index.to(tokens.device))
    return tokens.view(-1, unit, tokens.shape[-1])[reverse].reshape(tokens.shape)  # (N/unit, unit, d) -> (N, d)


def encode_dual_resolution(
    tower: nn.Module, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor, pool_size: int = 2
) -> list[DualResFeatures]:
    """Full- and half-resolution pre-merger tokens of every clip, from one call of the tower.

    Args:
        tower: transformers' Qwen2-VL or Qwen2.5-VL vision tower.
        pixel_values_videos: ``(sum t*h*w, c*tp*p*p)`` full-resolution patches of all clips.
        video_grid_thw: ``(num_clips, 3)`` full-resolution grids.
        pool_size: pixel down-sampling of the second pathway.

    Returns:
        One :class:`DualResFeatures` per clip: ``high`` ``(t, h*w, d)`` and ``low`` ``(t, h/2*w/2, d)``.
    """
    grids = [tuple(int(v) for v in g) for g in video_grid_thw.tolist()]
    full_sizes = [t * h * w for t, h, w in grids]
    patch_size, merge = tower.config.patch_size, tower.config.spatial_merge_size
    small, small_grids = [], []
    for clip, grid in zip(pixel_values_videos.split(full_sizes), grids, strict=True):
        # Pool in fp32 whatever the tower's dtype, so bf16 towers see the same pooled pixels.
        patches, small_grid = downsample_patches(clip.float(), grid, pool_size, patch_size, merge)
        small.append(patches)
        small_grids.append(small_grid)
    pixels = torch.cat([pixel_values_videos.float(), *small])
    all_grids = torch.tensor(grids + small_grids, device=video_grid_thw.device)
    tokens = pre_merger_tokens(tower, pixels, all_grids)  # (sum full + sum small, d)
    small_sizes = [t * h * w for t, h, w in small_grids]
    parts = tokens.split(full_sizes + small_sizes)
    out = []
    for i, (t, h, w) in enumerate(grids):
        high = parts[i].view(t, h * w, -1)  # (t, h*w, d)
        low = parts[len(grids) + i].view(t, small_sizes[i] // t, -1)  # (t, h/2*w/2, d)
        out.append(DualResFeatures(high=high, low=low, grid_hw=(h, w), pool_size=pool_size))
    return out
