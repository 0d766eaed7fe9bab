"""Frame-index policies: pure functions from a video's length and frame rate to the frames to decode.

Nothing here touches a file. Every function returns a sorted (non-decreasing) ``np.ndarray`` of ``int64``
frame indices in ``[0, num_frames - 1]``; the reader in ``reader.py`` decodes exactly those frames.

Policies and where they come from:

* ``fps_indices`` - Flash-VStream's own pipeline: frames extracted at ``target_fps`` (the count clamped to
  ``[min_frames, extraction_max_frames]``, indices spread with a rounded ``linspace``), then, when more than
  ``max_frames`` were extracted, ``max_frames`` of those picked uniformly (Flash-VStream-Qwen evaluates with
  ``max_frames=240``).
* ``uniform_indices`` - ``n`` frames spread evenly from the first to the last frame.
* ``segment_middle_indices`` - the MVBench / MLVU official rule: split a window into ``n`` equal segments
  and take the middle frame of each.

``FrameSampler`` bundles one policy and its settings into a validated, frozen config object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FrameSampler", "fps_indices", "segment_middle_indices", "uniform_indices"]

POLICIES = ("fps", "uniform", "segment_middle", "all")

# Most frames Flash-VStream-Qwen's `extract_frames.py` writes per video (14400 = 4 h at 1 fps).
FLASH_VSTREAM_EXTRACTION_MAX_FRAMES = 14400


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_positive_float(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")


def _rounded_linspace(last: int, n: int) -> np.ndarray:
    """``n`` points from 0 to ``last`` inclusive, rounded half-to-even (numpy's ``round``), as int64."""
    return np.linspace(0, last, n).round().astype(np.int64)


def uniform_indices(num_frames: int, n: int) -> np.ndarray:
    """Pick ``n`` frames evenly spaced from the first frame to the last one.

    The indices are ``linspace(0, num_frames - 1, n)`` rounded half-to-even, so the first and the last frame
    are always included (for ``n >= 2``). When ``n > num_frames`` some frames repeat (each index still appears
    in order); nothing is dropped, so the result always has exactly ``n`` entries.

    Args:
        num_frames: Frames in the video (``>= 1``).
        n: Frames wanted (``>= 1``).

    Returns:
        ``(n,)`` int64 array, non-decreasing, values in ``[0, num_frames - 1]``.

    Raises:
        ValueError: If ``num_frames`` or ``n`` is not a positive integer.

    >>> uniform_indices(10, 4).tolist()
    [0, 3, 6, 9]
    """
    _check_positive_int(num_frames, "num_frames")
    _check_positive_int(n, "n")
    return _rounded_linspace(num_frames - 1, n)


def fps_indices(
    num_frames: int,
    native_fps: float,
    target_fps: float = 1.0,
    min_frames: int = 4,
    max_frames: int = FLASH_VSTREAM_EXTRACTION_MAX_FRAMES,
    *,
    extraction_max_frames: int = FLASH_VSTREAM_EXTRACTION_MAX_FRAMES,
) -> np.ndarray:
    """Flash-VStream's frame policy: sample at ``target_fps``, clamp the count, cap it at ``max_frames``.

    The count is ``n = clamp(round(duration * target_fps), min_frames, max_frames)`` with
    ``duration = num_frames / native_fps`` (``round`` is Python's, half-to-even). The frames are chosen in two
    stages, exactly as the released Flash-VStream-Qwen pipeline does:

    1. extraction: ``n1 = clamp(round(duration * target_fps), min_frames, extraction_max_frames)`` frames at
       ``linspace(0, num_frames - 1, n1)`` rounded (``scripts/extract_frames.py``);
    2. when ``n1 > max_frames``, ``max_frames`` of the extracted frames at ``linspace(0, n1 - 1, max_frames)``
       rounded (the eval's ``max_frames=240``).

    With the default ``max_frames == extraction_max_frames`` stage 2 never runs and the result is simply
    ``linspace(0, num_frames - 1, n)`` rounded. With a smaller ``max_frames`` the frames stay on the
    ``target_fps`` grid the model saw, instead of a fresh ``linspace`` that could fall between grid frames.

    When ``min_frames`` exceeds ``num_frames`` (a very short video) frames **repeat**: a 2-frame video with
    ``min_frames=4`` gives ``[0, 0, 1, 1]``, as the upstream extractor writes duplicate frames.

    Args:
        num_frames: Frames in the video (``>= 1``).
        native_fps: The video's frame rate (``> 0``).
        target_fps: Sampling rate in frames per second of video (``> 0``).
        min_frames: Fewest frames returned (``>= 1``).
        max_frames: Most frames returned (``>= min_frames``).
        extraction_max_frames: Cap of the extraction stage (``>= min_frames``); Flash-VStream uses 14400.

    Returns:
        ``(n,)`` int64 array, non-decreasing, values in ``[0, num_frames - 1]``.

    Raises:
        ValueError: If an argument is out of range; the message names it.

    >>> fps_indices(50, 10.0).tolist()  # 5 s at 1 fps
    [0, 12, 24, 37, 49]
    """
    _check_positive_int(num_frames, "num_frames")
    _check_positive_float(native_fps, "native_fps")
    _check_positive_float(target_fps, "target_fps")
    _check_positive_int(min_frames, "min_frames")
    _check_positive_int(max_frames, "max_frames")
    _check_positive_int(extraction_max_frames, "extraction_max_frames")
    if min_frames > max_frames:
        raise ValueError(f"`min_frames` ({min_frames}) must not exceed `max_frames` ({max_frames}).")
    if min_frames > extraction_max_frames:
        raise ValueError(
            f"`min_frames` ({min_frames}) must not exceed `extraction_max_frames` ({extraction_max_frames})."
        )
    duration = num_frames / native_fps
    n_extracted = min(max(round(duration * target_fps), min_frames), extraction_max_frames)
    extracted = _rounded_linspace(num_frames - 1, n_extracted)
    if n_extracted <= max_frames:
        return extracted
    return extracted[_rounded_linspace(n_extracted - 1, max_frames)]


def segment_middle_indices(
    num_frames: int,
    n: int,
    start: float | None = None,
    end: float | None = None,
    fps: float | None = None,
    *,
    first_number: int = 0,
) -> np.ndarray:
    """The middle frame of each of ``n`` equal segments of a window (MVBench / MLVU official sampling).

    The window runs from ``start_idx = max(first_number, round(start * fps))`` to
    ``end_idx = min(round(end * fps), last)``, where ``last = first_number + num_frames - 1`` is the last
    frame number (Python ``round``, half-to-even). A bound that is ``None`` is the video's own start or end;
    without ``fps`` the bounds are frame numbers. With ``seg = (end_idx - start_idx) / n`` the ``i``-th frame
    number is ``int(start_idx + seg / 2 + round_half_even(seg * i))``: the benchmarks' rounding, kept so that
    indices match theirs exactly. The window spans ``end_idx - start_idx`` frames (not ``+ 1``), as in the
    official code.

    ``first_number`` is the number of the first frame in the benchmark's own numbering: 0 for video files,
    1 for MVBench's frame folders (``00001.jpg`` ...). The result is always converted back to 0-based
    positions (frame number minus ``first_number``), which is what ``read_video`` takes.

    Args:
        num_frames: Frames in the video (``>= 1``).
        n: Segments, i.e. frames returned (``>= 1``).
        start: Window start, in seconds when ``fps`` is given, else a frame number; ``None`` for frame 0.
        end: Window end, same unit as ``start``; ``None`` for the last frame.
        fps: Frame rate converting ``start``/``end`` from seconds to frames; ``None`` for frame numbers.
        first_number: Number of the first frame in the benchmark's numbering (0 or 1).

    Returns:
        ``(n,)`` int64 array of 0-based positions, non-decreasing, in ``[0, num_frames - 1]``.

    Raises:
        ValueError: If an argument is out of range or the window is empty (``start`` after ``end`` or
            after the last frame); the message names the argument.

    >>> segment_middle_indices(33, 4).tolist()
    [4, 12, 20, 28]
    """
    _check_positive_int(num_frames, "num_frames")
    _check_positive_int(n, "n")
    if fps is not None:
        _check_positive_float(fps, "fps")
    scale = 1.0 if fps is None else float(fps)
    last = first_number + num_frames - 1
    start_idx = first_number if start is None else max(first_number, round(start * scale))
    end_idx = last if end is None else min(round(end * scale), last)
    if start_idx > end_idx:
        unit = "s" if fps is not None else " (frame number)"
        raise ValueError(
            f"Empty sampling window: `start`={start}{unit} and `end`={end}{unit} give frames "
            f"{start_idx}..{end_idx} of a video numbered {first_number}..{last}; "
            "pass `start` <= `end` inside the video."
        )
    seg = (end_idx - start_idx) / n
    numbers = start_idx + seg / 2 + np.round(seg * np.arange(n))
    # Truncation toward zero == floor here, since every value is non-negative.
    return numbers.astype(np.int64) - first_number


@dataclass(frozen=True)
class FrameSampler:
    """Which frames of a video to decode: one policy plus its settings.

    >>> FrameSampler("fps", max_frames=240).indices(num_frames=300, native_fps=30.0).size  # 10 s at 1 fps
    10
    >>> FrameSampler("fps", max_frames=4).indices(num_frames=300, native_fps=30.0).tolist()
    [0, 100, 199, 299]
    >>> FrameSampler("segment_middle", num_frames=2).indices(num_frames=9, native_fps=1.0).tolist()
    [2, 6]
    """

    policy: str = "fps"
    """One of "fps" (``fps_indices``), "uniform" (``uniform_indices``), "segment_middle"
    (``segment_middle_indices``) or "all" (every frame in the window)."""

    target_fps: float = 1.0
    """Sampling rate of the "fps" policy, in frames per second of video."""

    num_frames: int | None = None
    """Frames wanted by the "uniform" and "segment_middle" policies (required for those, unused otherwise)."""

    min_frames: int = 4
    """Fewest frames the "fps" policy returns (frames repeat in videos shorter than this)."""

    max_frames: int = FLASH_VSTREAM_EXTRACTION_MAX_FRAMES
    """Most frames the "fps" policy returns; Flash-VStream-Qwen evaluates with 240."""

    start: float | None = None
    """Start of the window to sample from, in seconds; ``None`` for the start of the video."""

    end: float | None = None
    """End of the window to sample from, in seconds; ``None`` for the end of the video."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"FrameSampler.policy must be one of {POLICIES}, got {self.policy!r}.")
        _check_positive_float(self.target_fps, "FrameSampler.target_fps")
        _check_positive_int(self.min_frames, "FrameSampler.min_frames")
        _check_positive_int(self.max_frames, "FrameSampler.max_frames")
        if self.min_frames > self.max_frames:
            raise ValueError(
                f"FrameSampler.min_frames ({self.min_frames}) must not exceed "
                f"FrameSampler.max_frames ({self.max_frames})."
            )
        if self.policy in ("uniform", "segment_middle"):
            if self.num_frames is None:
                raise ValueError(f"FrameSampler.num_frames is required for policy {self.policy!r}; set it.")
            _check_positive_int(self.num_frames, "FrameSampler.num_frames")
        elif self.num_frames is not None:
            raise ValueError(
                "FrameSampler.num_frames is only used by the 'uniform' and 'segment_middle' policies, "
                f"not by {self.policy!r}; drop it (the 'fps' policy is bounded by `min_frames`/`max_frames`)."
            )
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not np.isfinite(value) or value < 0):
                raise ValueError(f"FrameSampler.{name} must be None or seconds >= 0, got {value!r}.")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"FrameSampler.start ({self.start}) must not be after FrameSampler.end ({self.end}).")

    def indices(self, num_frames: int, native_fps: float) -> np.ndarray:
        """Frame indices of a video with ``num_frames`` frames at ``native_fps``.

        The "segment_middle" policy applies ``start``/``end`` with the benchmarks' own rule. The other
        policies first cut the window ``[round(start * fps), min(round(end * fps), num_frames - 1)]`` and
        then run on the frames inside it ("fps" uses the window's duration).

        Args:
            num_frames: Frames in the video (``>= 1``).
            native_fps: The video's frame rate (``> 0``).

        Returns:
            int64 array of frame indices, non-decreasing, in ``[0, num_frames - 1]``.

        Raises:
            ValueError: If the video is empty, the rate is not positive, or the window misses the video.
        """
        _check_positive_int(num_frames, "num_frames")
        _check_positive_float(native_fps, "native_fps")
        if self.policy == "segment_middle":
            return segment_middle_indices(num_frames, self.num_frames, self.start, self.end, fps=native_fps)
        first, last = self._window(num_frames, native_fps)
        count = last - first + 1
        if self.policy == "all":
            picked = np.arange(count, dtype=np.int64)
        elif self.policy == "uniform":
            picked = uniform_indices(count, self.num_frames)
        else:
            picked = fps_indices(count, native_fps, self.target_fps, self.min_frames, self.max_frames)
        return picked + first

    def _window(self, num_frames: int, native_fps: float) -> tuple[int, int]:
        """First and last frame (inclusive) of the ``[start, end]`` window."""
        first = 0 if self.start is None else round(self.start * native_fps)
        last = num_frames - 1 if self.end is None else min(round(self.end * native_fps), num_frames - 1)
        if first > last:
            raise ValueError(
                f"FrameSampler window start={self.start}s end={self.end}s selects no frame of a "
                f"{num_frames / native_fps:.3f}s video ({num_frames} frames at {native_fps} fps); "
                "set `start` before the end of the video."
            )
        return first, last
