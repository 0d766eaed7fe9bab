"""Progress of one ``read_video`` call: an opt-in tqdm bar on stderr and an optional ``on_frames`` callback.

A 1-fps read of a two-hour film decodes 7,200 frames and takes minutes on a CPU; a bar (or the caller's own
display, through the callback) says it is working. Short reads stay silent even when a bar is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm

__all__ = ["PROGRESS_MIN_FRAMES", "FrameProgress"]

PROGRESS_MIN_FRAMES = 64
"""Fewest frames to decode for which ``progress=True`` draws a bar (shorter reads finish before it helps)."""

FramesCallback = Callable[[int, int], None]


class FrameProgress:
    """Counts decoded frames for a bar and a callback; counts reported never decrease.

    A read may start over (a seek that landed wrong, or ``backend="auto"`` moving from decord to PyAV); the
    counts it reports again are skipped, so ``on_frames`` sees a non-decreasing sequence that ends at the total.

    Args:
        desc: Bar label (the file name).
        show: Draw a tqdm bar on stderr (when there are at least ``PROGRESS_MIN_FRAMES`` frames).
        on_frames: Called as ``on_frames(done, total)``: once with ``done=0`` when the total is known, then
            whenever more frames are decoded. ``total`` counts distinct frames to decode.

    >>> seen = []
    >>> progress = FrameProgress("clip.mp4", show=False, on_frames=lambda d, t: seen.append(d))
    >>> progress.start(3); progress.advance_to(2); progress.advance_to(1); progress.advance_to(3)
    >>> seen
    [0, 2, 3]
    """

    def __init__(self, desc: str, show: bool = False, on_frames: FramesCallback | None = None):
        if on_frames is not None and not callable(on_frames):
            raise ValueError(f"`on_frames` must be a callable on_frames(done, total), got {on_frames!r}.")
        self.desc, self.show, self.on_frames = desc, bool(show), on_frames
        self.total = 0
        self._reported: int | None = None
        self._bar: tqdm | None = None

    def start(self, total: int) -> None:
        """The number of distinct frames this read decodes (called again when a read starts over)."""
        self.total = int(total)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()
        elif self.show and self.total >= PROGRESS_MIN_FRAMES:
            self._bar = tqdm(total=self.total, desc=self.desc, unit="frame", file=sys.stderr, leave=False)
        self.advance_to(0)

    def advance_to(self, done: int) -> None:
        """``done`` frames of the current attempt are decoded; report it if it is more than reported so far."""
        if self._reported is not None and done <= self._reported:
            return
        previous = self._reported or 0
        self._reported = done
        if self._bar is not None:
            self._bar.update(done - previous)
        if self.on_frames is not None:
            self.on_frames(done, self.total)

    def close(self) -> None:
        """Remove the bar (before an error line or the answer is printed)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
