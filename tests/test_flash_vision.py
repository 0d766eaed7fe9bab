"""Frames -> Qwen-VL patches, and the dual-resolution pass through transformers' own Qwen2-VL / Qwen2.5-VL towers."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLVisionConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from flash_vstream.model.tiny_qwen2vl import TINY_VISION
from flash_vstream.vision.qwen2vl import (
    FlashFrameProcessor,
    downsample_patches,
    encode_dual_resolution,
    patchify,
    pre_merger_tokens,
    unpatchify,
)

TOWERS = {
    "flash-qwen2vl": (Qwen2VLVisionConfig, Qwen2VisionTransformerPretrainedModel),
    "flash-qwen2_5vl": (Qwen2_5_VLVisionConfig, Qwen2_5_VisionTransformerPretrainedModel),
}


@pytest.fixture(scope="module", params=sorted(TOWERS))
def tower(request):
    config_class, tower_class = TOWERS[request.param]
    torch.manual_seed(0)
    return tower_class(config_class(**TINY_VISION[request.param])).eval()


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


def test_pre_merger_tokens_are_transformers_own_in_spatial_order(tower):
    """merger(our tokens) is the tower's own pooler_output, exactly; for Qwen2.5-VL the raw last_hidden_state
    is in window order (so the un-permutation is really exercised), ours is not."""
    pixels = torch.randn(2 * 8 * 8 + 2 * 4 * 8, 1176)
    grid = torch.tensor([[2, 8, 8], [2, 4, 8]])  # the 8x8 grid spans 4 windows of 2x2 merged tokens (Qwen2.5-VL)
    with torch.no_grad():
        own = tower(pixels, grid_thw=grid)
        ours = pre_merger_tokens(tower, pixels, grid)
        assert torch.equal(tower.merger(ours), own.pooler_output)
    if tower.config.model_type == "qwen2_5_vl_vision":
        assert not torch.allclose(ours, own.last_hidden_state)
    else:
        assert torch.equal(ours, own.last_hidden_state)


def test_dual_resolution_pass_equals_separate_passes(tower):
    """One ViT call over full + half resolution gives what two separate calls of the tower give."""
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    pixels, grid = FlashFrameProcessor()(frames)
    small, small_grid = downsample_patches(pixels, tuple(grid[0].tolist()), 2, 14, 2)
    with torch.no_grad():
        (dual,) = encode_dual_resolution(tower, pixels, grid)
        high = tower.merger(dual.high.reshape(-1, 32))
        low = tower.merger(dual.low.reshape(-1, 32))
        own_high = tower(pixels, grid_thw=grid).pooler_output
        own_low = tower(small, grid_thw=torch.tensor([small_grid])).pooler_output
    assert dual.grid_hw == (8, 8) and dual.high.shape == (2, 64, 32) and dual.low.shape == (2, 16, 32)
    torch.testing.assert_close(high, own_high, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low, own_low, atol=1e-5, rtol=1e-5)


def test_unknown_tower_type_is_refused():
    other = SimpleNamespace(config=SimpleNamespace(model_type="siglip_vision_model"))
    with pytest.raises(ValueError, match="siglip_vision_model.*not supported"):
        pre_merger_tokens(other, torch.zeros(4, 1176), torch.tensor([[1, 2, 2]]))


def test_bad_frames_raise():
    with pytest.raises(ValueError, match="uint8"):
        FlashFrameProcessor()(np.zeros((2, 56, 56, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="min_pixels"):
        FlashFrameProcessor(min_pixels=10, max_pixels=5)


# --- the torch (GPU) path of the frame processor ---------------------------------------------------------------

TORCH_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _level_diffs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two patch tensors in 8-bit levels (at most; the smallest channel std undoes the normalising)."""
    from flash_vstream.vision.qwen2vl import QWEN2VL_STD

    return (a.cpu() - b.cpu()).abs() * min(QWEN2VL_STD) * 255


def _levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(_level_diffs(a, b).max())


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_torch_path_is_within_one_level_of_pillow_on_video_frames(device):
    """Both resizes (factor 28 then 56) in torch: the patches of the Pillow path to within 1/255, same grid.

    Two 8-bit resizes in a row can compound one level each: about one value in a million is 2/255 off.
    """
    from pathlib import Path

    from flash_vstream.video import read_video

    frames = read_video(Path(__file__).resolve().parents[1] / "assets" / "sample.mp4").frames[:5]
    big = np.ascontiguousarray(np.repeat(np.repeat(frames, 3, axis=1), 3, axis=2))  # 720x960: downscaled
    for clip, pixels in ((frames, 4 * 224 * 224), (big, 4 * 224 * 224), (frames, 112 * 112)):
        patches, grid = FlashFrameProcessor(max_pixels=pixels)(clip)
        fast, fast_grid = FlashFrameProcessor(max_pixels=pixels, device=device)(clip)
        assert fast.device.type == device and torch.equal(fast_grid, grid) and fast.shape == patches.shape
        diffs = _level_diffs(fast, patches)
        assert float(diffs.max()) <= 2.0 + 1e-3, float(diffs.max())
        assert float((diffs > 1.0 + 1e-3).float().mean()) < 1e-4


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_torch_path_on_noise_stays_within_two_levels(device):
    rng = np.random.default_rng(1)
    for size in ((120, 160), (300, 200), (480, 854)):
        frames = rng.integers(0, 256, (3, *size, 3), dtype=np.uint8)
        patches, _ = FlashFrameProcessor()(frames)
        fast, _ = FlashFrameProcessor(device=device)(frames)
        assert _levels(fast, patches) <= 2.0 + 1e-3
