"""Frames -> Qwen2-VL patches, and the dual-resolution pass over transformers' own Qwen2-VL vision tower."""

import numpy as np
import pytest
import torch
from transformers import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from flash_vstream.model.tiny_qwen2vl import TINY_VISION
from flash_vstream.vision.qwen2vl import (
    FlashFrameProcessor,
    FlashVisionTower,
    downsample_patches,
    patchify,
    unpatchify,
)


@pytest.fixture(scope="module")
def towers():
    config = Qwen2VLVisionConfig(**TINY_VISION)
    torch.manual_seed(0)
    ours = FlashVisionTower(config).eval()
    theirs = Qwen2VisionTransformerPretrainedModel(config).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_published_frame_sizes():
    proc = FlashFrameProcessor()
    assert proc.factor == 56
    assert proc.frame_size(448, 448) == (448, 448)
    assert proc.frame_size(720, 1280) == (336, 560)  # 16:9, two-stage resize as published
    assert proc.frame_size(1080, 1920) == (336, 560)
    assert proc.grid_thw(240, 720, 1280) == (120, 24, 40)
    assert proc.grid_thw(15, 448, 448) == (8, 32, 32)  # odd count padded


def test_patches_match_transformers_image_processor():
    """A clip of two identical frames patchifies exactly like Qwen2-VL's own processor does one image."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (112, 168, 3), dtype=np.uint8)  # multiples of 56: no resize on either side
    ours, grid = FlashFrameProcessor()(np.stack([frame, frame]))
    ref = Qwen2VLImageProcessorPil()(images=[frame], return_tensors="pt")
    assert grid.tolist() == ref["image_grid_thw"].tolist() == [[1, 8, 12]]
    torch.testing.assert_close(ours, ref["pixel_values"].float(), atol=1e-5, rtol=0)


def test_odd_frame_count_repeats_last_frame():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 56, 56, 3), dtype=np.uint8)
    patches, grid = FlashFrameProcessor()(frames)
    padded, _ = FlashFrameProcessor()(np.concatenate([frames, frames[-1:]]))
    assert grid.tolist() == [[2, 4, 4]]
    torch.testing.assert_close(patches, padded)


def test_unpatchify_inverts_patchify():
    volume = torch.randn(2, 3, 2, 56, 84)
    patches = patchify(volume, 14, 2)
    assert patches.shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
    torch.testing.assert_close(unpatchify(patches, (2, 4, 6), 14, 2), volume)


def test_downsample_is_pixel_average_pool():
    """Slow reference: average every 2x2 pixel block by hand, then patchify the half-size frames."""
    volume = torch.randn(1, 3, 2, 56, 112)
    small, grid = downsample_patches(patchify(volume, 14, 2), (1, 4, 8), 2, 14, 2)
    pooled = torch.zeros(1, 3, 2, 28, 56)
    for i in range(28):
        for j in range(56):
            pooled[..., i, j] = volume[..., 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(-1, -2))
    assert grid == (1, 2, 4)
    torch.testing.assert_close(small, patchify(pooled, 14, 2))
    with pytest.raises(ValueError, match="merge\\*pool"):
        downsample_patches(patchify(torch.randn(1, 3, 2, 28, 28), 14, 2), (1, 2, 2), 2, 14, 2)


def test_full_resolution_features_equal_transformers_tower(towers):
    ours, theirs = towers
    pixels = torch.randn(2 * 4 * 8 + 2 * 8 * 4, 1176)
    grid = torch.tensor([[2, 4, 8], [2, 8, 4]])
    with torch.no_grad():
        expected = theirs(pixels, grid_thw=grid).last_hidden_state  # pre-merger output of transformers' tower
        got = ours.forward_features(pixels, grid)
    torch.testing.assert_close(got, expected)


def test_dual_resolution_pass_equals_separate_passes(towers):
    """One ViT call over full + half resolution gives what two separate calls give (windowed attention)."""
    ours, theirs = towers
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    pixels, grid = FlashFrameProcessor()(frames)
    small, small_grid = downsample_patches(pixels, tuple(grid[0].tolist()), 2, 14, 2)
    with torch.no_grad():
        (dual,) = ours.forward_dual_resolution(pixels, grid)
        high = theirs(pixels, grid_thw=grid).last_hidden_state
        low = theirs(small, grid_thw=torch.tensor([small_grid])).last_hidden_state
    assert dual.grid_hw == (8, 8) and dual.high.shape == (2, 64, 32) and dual.low.shape == (2, 16, 32)
    torch.testing.assert_close(dual.high.reshape(-1, 32), high, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dual.low.reshape(-1, 32), low, atol=1e-5, rtol=1e-5)


def test_bad_frames_raise():
    with pytest.raises(ValueError, match="uint8"):
        FlashFrameProcessor()(np.zeros((2, 56, 56, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="min_pixels"):
        FlashFrameProcessor(min_pixels=10, max_pixels=5)
