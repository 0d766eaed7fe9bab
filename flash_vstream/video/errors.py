"""``VideoError``, the one exception for input that cannot be read as asked, and its shared wording."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CORRUPT_FIX", "NOT_A_VIDEO_FIX", "VideoError", "one_line"]

NOT_A_VIDEO_FIX = "check that it is a whole video file (not text, an archive or a partial download)"
CORRUPT_FIX = "the file is truncated or corrupt: re-download it or re-encode it (e.g. with ffmpeg)"


def one_line(text: object) -> str:
    """``text`` with its lines stripped and joined by "; " (a message must fit on one line)."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


class VideoError(ValueError):
    """A video, frame folder or image that cannot be read as asked.

    The message is one line, ``"<path>: <reason>. <Fix>."``; the parts stay available as attributes.

    Args:
        path: The file or folder at fault.
        reason: What is wrong with it.
        fix: What the user can do about it.

    >>> str(VideoError("clip.mp4", "file is empty (0 bytes)", "re-download it"))
    'clip.mp4: file is empty (0 bytes). Re-download it.'
    """

    def __init__(self, path: str | Path, reason: str, fix: str):
        self.path = str(path)
        self.reason = one_line(reason).rstrip(".")
        self.fix = one_line(fix).rstrip(".")
        fix_sentence = self.fix[:1].upper() + self.fix[1:]
        shown = repr(self.path) if "\n" in self.path or "\r" in self.path else self.path
        super().__init__(f"{shown}: {self.reason}. {fix_sentence}.")
