"""Keeping FFmpeg's and decord's own log lines off the terminal, and turning them into error reasons.

A corrupt file makes FFmpeg log lines such as ``[mov,mp4,m4a,3gp,3g2,mj2 @ 0x...] moov atom not found``. A user
should see one ``VideoError`` line instead, with that explanation inside it. Two libraries log, differently:

* PyAV routes FFmpeg's log through its own callback, silent by default (``av.logging`` level ``None``), which
  also leaves its exceptions without FFmpeg's explanation. ``ffmpeg_log_scope`` raises the level to WARNING only
  while a file is opened and demuxed, and captures the messages instead of printing them. The level is
  process-wide, so nested and concurrent scopes share one reference count and the first level comes back when
  the last scope ends. Decoding runs outside the scope: FFmpeg's decoder threads would call into Python to log,
  which PyAV warns can deadlock.
* decord ships its own copy of FFmpeg, whose default callback writes straight to file descriptor 2, as does
  decord's C++ logging. ``captured_stderr`` points fd 2 at a temporary file only around one decord call and
  always restores it; log lines are kept for the error message, and anything else written to fd 2 meanwhile
  (another thread's output) is passed on.

Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from av import logging as av_logging

from flash_vstream.video.errors import one_line

__all__ = ["captured_stderr", "decord_reason", "ffmpeg_log_scope", "ffmpeg_reason"]

# FFmpeg's default log line, "[h264 @ 0x55d0c0a1b2c0] Invalid NAL unit size (4450 > 3572).", and its
# "    Last message repeated 3 times" follow-up; decord's C++ log lines start with "[08:11:09] ".
_FFMPEG_LINE = re.compile(r"^\[[^\]@]+ @ (?:0x)?[0-9a-fA-F]+\]\s*(?P<message>.*)$")
_FFMPEG_REPEAT = re.compile(r"^\s+Last message repeated \d+ times?$")
_DECORD_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
# decord's exceptions open with "[08:13:15] /project/src/runtime/ndarray.cc:171: ", once per nesting level.
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+?:\d+: ")
# PyAV's tally of skipped repeats, "moov atom not found\n (repeated 2 more times)", says nothing new.
_REPEAT_TALLY = re.compile(r"\s*\(repeated \d+ more times?\)\s*$")
_MAX_REASONS = 2  # last distinct FFmpeg errors quoted in a message; more only repeat the damage


class _LevelScope:
    """One reference-counted lease on PyAV's process-wide log level (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._caller_level: int | None = None
        self._caller_skips = True
        self._others: av_logging.Capture | None = None

    def enter(self) -> bool:
        """Take the lease; True when the caller's level was PyAV's silent default (so ours is in force)."""
        with self._lock:
            if self._depth == 0:
                self._caller_level = av_logging.get_level()
                # PyAV drops a message equal to the previous one (say, a second open of the same bad file),
                # which would leave that error without its reason.
                self._caller_skips = av_logging.get_skip_repeated()
                av_logging.set_skip_repeated(False)
                if self._caller_level is None:
                    av_logging.set_level(av_logging.WARNING)
                    # Other threads' messages while the level is raised would reach Python logging's
                    # last-resort handler (stderr); with the silent default they were dropped, so drop them.
                    self._others = av_logging.Capture(local=False)
                    self._others.__enter__()
            self._depth += 1
            return self._caller_level is None

    def leave(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                if self._others is not None:
                    self._others.__exit__(None, None, None)
                    self._others = None
                av_logging.set_level(self._caller_level)
                av_logging.set_skip_repeated(self._caller_skips)


_LEVEL = _LevelScope()  # guards a C library's process-wide setting, so it is per process by nature


@contextmanager
def ffmpeg_log_scope() -> Iterator[list[tuple[int, str, str]]]:
    """Capture FFmpeg's messages (as PyAV's ``(level, name, message)``) in this thread instead of printing them.

    When the caller had set a PyAV log level of their own, captured messages are passed on to Python logging
    (as PyAV would have) unless the block raised, in which case they belong in the error message.

    Yields:
        The list the messages arrive in; it is complete once the block ends.
    """
    ours = _LEVEL.enter()
    try:
        with av_logging.Capture(local=True) as messages:
            yield messages
        if not ours:
            for level, name, message in messages:
                logger = logging.getLogger(f"libav.{name}" if name else "libav.generic")
                logger.log(av_logging.adapt_level(level), message.strip())
    finally:
        _LEVEL.leave()


def ffmpeg_reason(messages: list[tuple[int, str, str]]) -> str:
    """The last distinct FFmpeg errors (falling back to warnings) of a capture, one line, or ``""``."""
    errors = [_REPEAT_TALLY.sub("", m) for level, _, m in messages if level <= av_logging.ERROR]
    chosen = errors or [_REPEAT_TALLY.sub("", m) for level, _, m in messages if level <= av_logging.WARNING]
    return _last_distinct(chosen)


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Send what C code writes to file descriptor 2 to a temporary file for the block; always restore it.

    Yields:
        A list that, once the block ends, holds the FFmpeg/decord log messages written meanwhile (prefixes
        removed); other lines written to fd 2 meanwhile are copied back to it.
    """
    captured: list[str] = []
    try:
        sys.stderr.flush()  # Python's buffered text was written before the block: it goes to the real stderr
    except (AttributeError, OSError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (a detached daemon): nothing can reach a terminal
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            others = _sort_lines(sink.read().decode("utf-8", "replace"), captured)
            if others:
                os.write(2, others.encode())


def decord_reason(err: BaseException, logged: list[str]) -> str:
    """One line for a decord failure: what its FFmpeg logged meanwhile, else decord's own exception text."""
    return _last_distinct(logged) or one_line(_DECORD_PREFIX.sub("", str(err))).rstrip(".")


def _sort_lines(text: str, logged: list[str]) -> str:
    """Append FFmpeg messages of ``text`` to ``logged``; return the lines that are not library logging."""
    others = []
    for line in text.splitlines(keepends=True):
        match = _FFMPEG_LINE.match(line.rstrip("\r\n"))
        if match:
            logged.append(match["message"])
        elif not (_DECORD_LINE.match(line) or _FFMPEG_REPEAT.match(line.rstrip("\r\n"))):
            others.append(line)
    return "".join(others)


def _last_distinct(messages: list[str]) -> str:
    """The last ``_MAX_REASONS`` distinct messages, in order, trailing periods removed, joined by "; "."""
    chosen: list[str] = []
    for message in reversed(messages):
        message = one_line(message).rstrip(".")
        if message and message not in chosen:
            chosen.insert(0, message)
            if len(chosen) == _MAX_REASONS:
                break
    return "; ".join(chosen)
