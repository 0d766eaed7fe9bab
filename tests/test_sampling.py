"""Frame-index policies: exact indices on small cases, clamps, bounds and validation."""

import numpy as np
import pytest

from flash_vstream.video import FrameSampler, fps_indices, segment_middle_indices, uniform_indices


def test_uniform_exact_and_repeats():
    assert uniform_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_indices(10, 1).tolist() == [0]
    assert uniform_indices(3, 5).tolist() == [0, 0, 1, 2, 2]  # more frames than exist: repeats, never dropped
    assert uniform_indices(1, 3).tolist() == [0, 0, 0]


def test_fps_policy_counts_and_positions():
    # 5 s at 10 fps sampled at 1 fps: 5 frames over the whole clip.
    assert fps_indices(50, 10.0).tolist() == [0, 12, 24, 37, 49]
    # 2 s clip, at least 4 frames: the clamp wins.
    assert fps_indices(60, 30.0, min_frames=4).tolist() == [0, 20, 39, 59]
    # A 2-frame video with min_frames=4 repeats frames, as the upstream extractor writes duplicates.
    assert fps_indices(2, 1.0, min_frames=4).tolist() == [0, 0, 1, 1]
    # Long video capped at 240 frames: 600 extracted at 1 fps, 240 of those picked uniformly.
    capped = fps_indices(600 * 30, 30.0, max_frames=240)
    extracted = np.linspace(0, 600 * 30 - 1, 600).round().astype(np.int64)
    assert capped.size == 240 and set(capped.tolist()) <= set(extracted.tolist())
    assert capped[0] == 0 and capped[-1] == 600 * 30 - 1


@pytest.mark.parametrize("n_frames,fps", [(1, 1.0), (7, 3.0), (1000, 29.97), (36000, 25.0)])
def test_fps_policy_bounds_and_order(n_frames, fps):
    idx = fps_indices(n_frames, fps, max_frames=240)
    assert idx.dtype == np.int64 and idx.min() >= 0 and idx.max() <= n_frames - 1
    assert (np.diff(idx) >= 0).all()
    assert 4 <= idx.size <= 240


def test_segment_middle_exact():
    assert segment_middle_indices(33, 4).tolist() == [4, 12, 20, 28]
    # A window in seconds at 10 fps: frames 20..60, 4 segments of 10 frames, middles at 25, 35, 45, 55.
    assert segment_middle_indices(100, 4, start=2.0, end=6.0, fps=10.0).tolist() == [25, 35, 45, 55]
    # MVBench frame folders number from 1; results are 0-based positions.
    assert segment_middle_indices(9, 2, first_number=1).tolist() == [2, 6]


def test_segment_middle_rejects_empty_window():
    with pytest.raises(ValueError, match="Empty sampling window"):
        segment_middle_indices(10, 2, start=8.0, end=2.0, fps=1.0)


def test_sampler_dispatch_and_validation():
    assert FrameSampler("uniform", num_frames=4).indices(10, 1.0).tolist() == [0, 3, 6, 9]
    assert FrameSampler("all").indices(5, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert FrameSampler("fps", max_frames=4).indices(300, 30.0).tolist() == [0, 100, 199, 299]
    assert FrameSampler("segment_middle", num_frames=2).indices(9, 1.0).tolist() == [2, 6]
    with pytest.raises(ValueError, match="policy"):
        FrameSampler("random")
    with pytest.raises(ValueError, match="target_fps"):
        FrameSampler("fps", target_fps=0)
    with pytest.raises(ValueError, match="must be a positive integer"):
        uniform_indices(0, 3)
