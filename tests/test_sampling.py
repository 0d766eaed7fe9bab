"""Frame-index policies: exact arrays for small cases, clamps, bounds, and parity with slow restatements."""

import numpy as np
import pytest

from flash_vstream.video import FrameSampler, fps_indices, segment_middle_indices, uniform_indices


def _slow_segment_middle(start_idx, end_idx, n):
    """Benchmarks' rule written out one segment at a time with Python floats (round() is half-to-even)."""
    seg = (end_idx - start_idx) / n
    return [int(start_idx + seg / 2 + round(seg * i)) for i in range(n)]


def _assert_valid(indices, num_frames):
    assert indices.dtype == np.int64
    assert np.all(np.diff(indices) >= 0)
    assert indices.min() >= 0 and indices.max() <= num_frames - 1


# --- uniform -------------------------------------------------------------------------------------------------


def test_uniform_exact_small_cases():
    assert uniform_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_indices(10, 1).tolist() == [0]
    assert uniform_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    # 0, 2.5, 5, 7.5, 10 rounded half-to-even
    assert uniform_indices(11, 5).tolist() == [0, 2, 5, 8, 10]


def test_uniform_more_frames_than_video_repeats():
    assert uniform_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert uniform_indices(1, 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize("num_frames,n", [(1, 1), (7, 3), (100, 16), (1000, 240), (3, 50)])
def test_uniform_bounds_and_endpoints(num_frames, n):
    got = uniform_indices(num_frames, n)
    _assert_valid(got, num_frames)
    assert len(got) == n
    assert got[0] == 0 and (n == 1 or got[-1] == num_frames - 1)


@pytest.mark.parametrize("bad", [dict(num_frames=0, n=3), dict(num_frames=5, n=0), dict(num_frames=2.5, n=1)])
def test_uniform_rejects_bad_arguments(bad):
    name = next(k for k, v in bad.items() if v in (0, 2.5))
    with pytest.raises(ValueError, match=name):
        uniform_indices(**bad)


# --- fps -----------------------------------------------------------------------------------------------------


def test_fps_exact_small_case():
    # 50 frames at 10 fps = 5 s -> 5 frames at linspace(0, 49, 5) = 0, 12.25, 24.5, 36.75, 49
    assert fps_indices(50, 10.0).tolist() == [0, 12, 24, 37, 49]
    # 2 fps target on the same video: 10 frames
    assert fps_indices(50, 10.0, target_fps=2.0).tolist() == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49]


def test_fps_count_is_the_clamped_rounded_duration():
    for num_frames, native_fps, target in [(300, 30.0, 1.0), (301, 29.97, 1.0), (90, 30.0, 0.5), (7, 1.0, 1.0)]:
        expected = min(max(round(num_frames / native_fps * target), 4), 14400)
        got = fps_indices(num_frames, native_fps, target_fps=target)
        assert len(got) == expected
        _assert_valid(got, num_frames)


def test_fps_min_frames_clamp_repeats_frames_of_short_videos():
    # 1 s at 2 fps would be 1 frame; min_frames=4 forces 4 frames from a 2-frame video: frames repeat.
    assert fps_indices(2, 2.0).tolist() == [0, 0, 1, 1]
    assert fps_indices(1, 30.0).tolist() == [0, 0, 0, 0]
    assert fps_indices(30, 30.0, min_frames=3).tolist() == [0, 14, 29]


def test_fps_max_frames_clamp_matches_the_clamp_formula():
    # 1000 s at 1 fps native -> 1000 frames, capped to 240
    got = fps_indices(1000, 1.0, max_frames=240)
    assert len(got) == 240
    _assert_valid(got, 1000)
    assert len(np.unique(got)) == 240


def test_fps_with_default_cap_is_one_plain_linspace():
    for num_frames, native_fps in [(1800, 30.0), (12345, 24.0), (100, 25.0)]:
        n = max(round(num_frames / native_fps), 4)
        expected = np.linspace(0, num_frames - 1, n).round().astype(np.int64)
        np.testing.assert_array_equal(fps_indices(num_frames, native_fps), expected)


def test_fps_max_frames_picks_from_the_one_fps_extraction_grid():
    # Flash-VStream-Qwen: extract at 1 fps (<= 14400 frames), then take 240 of those uniformly.
    num_frames, native_fps = 30 * 600, 30.0  # 10 minutes
    extracted = np.linspace(0, num_frames - 1, 600).round().astype(np.int64)
    expected = extracted[np.linspace(0, 599, 240).round().astype(np.int64)]
    got = fps_indices(num_frames, native_fps, max_frames=240)
    np.testing.assert_array_equal(got, expected)
    assert set(got.tolist()) <= set(extracted.tolist())


def test_fps_extraction_cap_applies_before_max_frames():
    # 5 h at 1 fps native: extraction stops at 14400 frames, then 240 of them.
    num_frames = 5 * 3600
    extracted = np.linspace(0, num_frames - 1, 14400).round().astype(np.int64)
    expected = extracted[np.linspace(0, 14399, 240).round().astype(np.int64)]
    np.testing.assert_array_equal(fps_indices(num_frames, 1.0, max_frames=240), expected)
    assert len(fps_indices(num_frames, 1.0)) == 14400


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(num_frames=0, native_fps=30.0), "num_frames"),
        (dict(num_frames=10, native_fps=0.0), "native_fps"),
        (dict(num_frames=10, native_fps=30.0, target_fps=-1.0), "target_fps"),
        (dict(num_frames=10, native_fps=30.0, min_frames=0), "min_frames"),
        (dict(num_frames=10, native_fps=30.0, min_frames=8, max_frames=4), "min_frames"),
    ],
)
def test_fps_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        fps_indices(**kwargs)


# --- segment middle ------------------------------------------------------------------------------------------


def test_segment_middle_exact_small_cases():
    assert segment_middle_indices(33, 4).tolist() == [4, 12, 20, 28]
    # 16 segments of a 100-frame video: seg = 99/16 = 6.1875
    assert segment_middle_indices(100, 16).tolist() == _slow_segment_middle(0, 99, 16)
    assert segment_middle_indices(100, 16).tolist() == [
        3, 9, 15, 22, 28, 34, 40, 46, 53, 59, 65, 71, 77, 83, 90, 96,
    ]


def test_segment_middle_window_in_seconds_follows_the_benchmark_rule():
    # MVBench fixture: start 11.1 s, end 19.6 s at 30 fps in a 900-frame video -> frames 333..588
    got = segment_middle_indices(900, 16, start=11.1, end=19.6, fps=30.0)
    assert got.tolist() == _slow_segment_middle(round(11.1 * 30), round(19.6 * 30), 16)
    assert got[0] >= 333 and got[-1] <= 588


def test_segment_middle_window_is_clipped_to_the_video():
    # end past the video: the window stops at the last frame; start before 0 starts at 0
    got = segment_middle_indices(50, 8, start=0.0, end=100.0, fps=1.0)
    assert got.tolist() == _slow_segment_middle(0, 49, 8)
    assert segment_middle_indices(50, 4, start=-5, end=20).tolist() == _slow_segment_middle(0, 20, 4)


def test_segment_middle_first_number_matches_one_based_frame_folders():
    # MVBench frame folders are numbered 1..N; indices come back as 0-based positions.
    n_files, fps = 90, 3.0
    official = _slow_segment_middle(max(1, round(2.0 * fps)), min(round(20.0 * fps), n_files), 8)
    got = segment_middle_indices(n_files, 8, start=2.0, end=20.0, fps=fps, first_number=1)
    assert got.tolist() == [i - 1 for i in official]
    whole = segment_middle_indices(n_files, 8, first_number=1)
    assert whole.tolist() == [i - 1 for i in _slow_segment_middle(1, n_files, 8)]
    _assert_valid(whole, n_files)


def test_segment_middle_more_segments_than_frames_repeats():
    assert segment_middle_indices(3, 6).tolist() == _slow_segment_middle(0, 2, 6)
    assert segment_middle_indices(1, 4).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("seed", range(5))
def test_segment_middle_random_windows_match_slow_rule_and_stay_in_bounds(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        num_frames = int(rng.integers(1, 5000))
        n = int(rng.integers(1, 64))
        fps = float(rng.uniform(1, 60))
        duration = num_frames / fps
        start = float(rng.uniform(0, duration * 0.9))
        end = float(rng.uniform(start, duration * 1.2))
        start_idx, end_idx = round(start * fps), min(round(end * fps), num_frames - 1)
        if start_idx > end_idx:
            with pytest.raises(ValueError, match="start"):
                segment_middle_indices(num_frames, n, start=start, end=end, fps=fps)
            continue
        got = segment_middle_indices(num_frames, n, start=start, end=end, fps=fps)
        assert got.tolist() == _slow_segment_middle(start_idx, end_idx, n)
        _assert_valid(got, num_frames)
        assert got[0] >= start_idx and got[-1] <= end_idx


def test_segment_middle_rejects_an_empty_window():
    with pytest.raises(ValueError, match="start"):
        segment_middle_indices(30, 4, start=40.0, end=50.0, fps=1.0)  # starts after the last frame
    with pytest.raises(ValueError, match="start"):
        segment_middle_indices(30, 4, start=20, end=10)


# --- FrameSampler --------------------------------------------------------------------------------------------


def test_sampler_dispatches_to_each_policy():
    assert FrameSampler("fps").indices(50, 10.0).tolist() == fps_indices(50, 10.0).tolist()
    assert FrameSampler("uniform", num_frames=4).indices(10, 1.0).tolist() == [0, 3, 6, 9]
    assert FrameSampler("segment_middle", num_frames=4).indices(33, 1.0).tolist() == [4, 12, 20, 28]
    assert FrameSampler("all").indices(5, 1.0).tolist() == [0, 1, 2, 3, 4]


def test_sampler_fps_max_frames_240_is_the_flash_vstream_qwen_eval():
    sampler = FrameSampler("fps", target_fps=1.0, max_frames=240)
    np.testing.assert_array_equal(sampler.indices(18000, 30.0), fps_indices(18000, 30.0, max_frames=240))
    assert len(sampler.indices(18000, 30.0)) == 240
    assert len(sampler.indices(3000, 30.0)) == 100  # under the cap: every 1-fps frame


def test_sampler_window_applies_to_every_policy():
    # 10 fps, 100 frames; window 2 s..5 s = frames 20..50
    assert FrameSampler("all", start=2.0, end=5.0).indices(100, 10.0).tolist() == list(range(20, 51))
    assert FrameSampler("uniform", num_frames=4, start=2.0, end=5.0).indices(100, 10.0).tolist() == [
        20, 30, 40, 50,
    ]
    got = FrameSampler("fps", start=2.0, end=5.0).indices(100, 10.0)
    np.testing.assert_array_equal(got, fps_indices(31, 10.0) + 20)
    seg = FrameSampler("segment_middle", num_frames=3, start=2.0, end=5.0).indices(100, 10.0)
    assert seg.tolist() == _slow_segment_middle(20, 50, 3)


def test_sampler_window_past_the_end_is_an_error():
    with pytest.raises(ValueError, match="start"):
        FrameSampler("all", start=20.0).indices(100, 10.0)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(policy="random"), "policy"),
        (dict(policy="uniform"), "num_frames"),
        (dict(policy="segment_middle", num_frames=0), "num_frames"),
        (dict(policy="fps", num_frames=16), "num_frames"),
        (dict(target_fps=0.0), "target_fps"),
        (dict(min_frames=0), "min_frames"),
        (dict(min_frames=10, max_frames=5), "min_frames"),
        (dict(start=-1.0), "start"),
        (dict(start=5.0, end=2.0), "start"),
        (dict(end=float("nan")), "end"),
    ],
)
def test_sampler_validates_fields_and_names_them(kwargs, field):
    with pytest.raises(ValueError, match=f"FrameSampler.{field}"):
        FrameSampler(**kwargs)


def test_sampler_is_frozen():
    sampler = FrameSampler()
    with pytest.raises(AttributeError):
        sampler.policy = "all"
