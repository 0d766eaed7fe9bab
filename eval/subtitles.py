"""Video-MME subtitles: SRT parsing and the selection of the lines shown at the sampled frames.

Both lmms-eval and Flash-VStream keep a subtitle line when one of a set of uniformly sampled frames falls in
its ``[start, end)`` interval, and take the text inside ``<font color="white" size=".72c">...</font>`` tags
(the form Video-MME's SRT files use). Lines without a font tag keep their plain text with any other tags
removed, so ordinary SRT files work too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["NO_SUBTITLES", "SubtitleLine", "parse_srt", "read_srt", "select_subtitles", "uniform_timestamps"]

NO_SUBTITLES = "No subtitles available"
"""Text used in place of subtitles when a video has no SRT file (lmms-eval's wording)."""

_TIME = re.compile(r"(\d+):(\d{2}):(\d{2})[,.](\d{1,3})\s*-->\s*(\d+):(\d{2}):(\d{2})[,.](\d{1,3})")
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>', re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class SubtitleLine:
    """One SRT entry."""

    start: float
    """Start time in seconds."""
    end: float
    """End time in seconds (exclusive)."""
    text: str
    """Display text, tags removed, lines joined by a space."""


def _seconds(hours: str, minutes: str, seconds: str, millis: str) -> float:
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis.ljust(3, "0")) / 1000


def _clean(raw: str) -> str:
    fonts = _FONT.findall(raw)
    text = " ".join(fonts) if fonts else _TAG.sub("", raw)
    return " ".join(text.split())


def parse_srt(text: str) -> list[SubtitleLine]:
    r"""Parse SRT text into timed lines; blocks without a timing line are ignored.

    >>> parse_srt('1\n00:00:01,000 --> 00:00:03,500\n<font color="white" size=".72c">Hello</font>\n')
    [SubtitleLine(start=1.0, end=3.5, text='Hello')]
    """
    lines: list[SubtitleLine] = []
    for block in re.split(r"\r?\n\s*\r?\n", text.replace("\ufeff", "")):
        rows = block.strip().splitlines()
        for position, row in enumerate(rows):
            match = _TIME.search(row)
            if match:
                start = _seconds(*match.groups()[:4])
                end = _seconds(*match.groups()[4:])
                content = _clean("\n".join(rows[position + 1 :]))
                if content:
                    lines.append(SubtitleLine(start, end, content))
                break
    return lines


def read_srt(path: Path) -> list[SubtitleLine]:
    """Read and parse an SRT file (UTF-8, undecodable bytes replaced)."""
    return parse_srt(Path(path).read_text(encoding="utf-8", errors="replace"))


def uniform_timestamps(total_frames: int, native_fps: float, count: int) -> np.ndarray:
    """Times (s) of ``count`` frames at ``linspace(0, total_frames - 1, count)`` cast to int (lmms-eval)."""
    indices = np.linspace(0, total_frames - 1, count, dtype=int)
    return indices / float(native_fps)


def select_subtitles(lines: Sequence[SubtitleLine], timestamps: Sequence[float]) -> str:
    """Join, in order, the lines whose ``[start, end)`` contains at least one of ``timestamps``.

    Returns:
        The selected texts joined by newlines, or `NO_SUBTITLES` when the file had no lines at all.
    """
    if not lines:
        return NO_SUBTITLES
    times = np.sort(np.asarray(timestamps, dtype=float))
    kept = []
    for line in lines:
        first = np.searchsorted(times, line.start, side="left")
        if first < len(times) and times[first] < line.end:
            kept.append(line.text)
    return "\n".join(kept)
