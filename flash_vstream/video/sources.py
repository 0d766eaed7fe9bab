"""Live frame sources: iterators of ``(frame, seconds)`` that a streaming session consumes.

Every source yields RGB ``uint8`` frames ``(h, w, 3)`` with their stream time in seconds (the first frame at
0.0, non-decreasing), one at a time, never the whole video:

- :class:`VideoFileSource`: a video file played at real speed (``speed=1``), at ``N`` times real speed, or as
  fast as it decodes (``speed=None``);
- :class:`FrameFolderSource`: a folder of numbered frame images at ``frames_fps`` (same naming rule as
  ``read_video``);
- :class:`LiveSource`: a camera, RTSP, HTTP(S) or any other URL FFmpeg reads, through PyAV (the source paces
  itself);
- :class:`ArraySource`: any Python iterable of frame arrays or ``(frame, seconds)`` pairs.

:func:`open_source` picks one from a string (what ``flash-vstream stream --source`` takes).

How a stream ends is recorded, not raised: when the frames run out (``"ended"``), when no frame arrives for
``stall_timeout`` seconds (``"stalled"``), when the source breaks mid-stream (``"broken"``: a corrupt packet, a
dropped connection, a bad frame) or when :meth:`FrameSource.close` stops it (``"stopped"``), iteration simply
stops and :attr:`FrameSource.end` holds a :class:`SourceEnd` with one clear line. Frames already yielded stay
valid, so a memory fed from the source stays answerable. Only a source that cannot start at all (a missing
file, a URL FFmpeg cannot open) raises, at construction, a ``VideoError``.

Reading runs on a small background thread ahead of the consumer (at most two frames ahead), so a stalled
network read is noticed while it blocks. ``fps`` keeps at most that many frames per second of stream time (on a
``k / fps`` grid, like the ``"fps"`` sampling policy) before any frame is converted to RGB.

>>> with VideoFileSource("assets/sample.mp4", speed=None, fps=1.0) as source:  # doctest: +SKIP
...     times = [round(t, 2) for _, t in source]
>>> times, source.end.reason  # doctest: +SKIP
([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 'ended')

Shapes: frames are ``(h, w, 3)`` RGB ``uint8``.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from flash_vstream.video.backends import check_opens
from flash_vstream.video.errors import VideoError, one_line
from flash_vstream.video.quiet import ffmpeg_log_scope, ffmpeg_reason
from flash_vstream.video.reader import load_image, numbered_frames

__all__ = [
    "END_REASONS",
    "ArraySource",
    "FrameFolderSource",
    "FrameSource",
    "LiveSource",
    "SourceEnd",
    "VideoFileSource",
    "open_source",
]

END_REASONS = ("ended", "stalled", "broken", "stopped")
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt", "hls")
_LOOKAHEAD = 2  # frames the reader thread may decode ahead of the consumer
CLOSE_JOIN_SECONDS = 5.0  # how long close() waits for the reader thread to let go of its decoder
_POLL = 0.05  # seconds between stall checks while the consumer waits
_RECENT_LOG = 4  # FFmpeg messages kept to explain a failure


@dataclass(frozen=True)
class SourceEnd:
    """How and when a stream ended.

    Attributes:
        reason: ``"ended"`` (ran out), ``"stalled"`` (no frame for ``stall_timeout`` s), ``"broken"`` (failed
            mid-stream) or ``"stopped"`` (closed by the consumer).
        message: one line for a user, naming the source, the frames delivered and what to do.
        frames: frames delivered before the end.
        stream_time: stream time of the last delivered frame (seconds; 0.0 when none).
    """

    reason: str
    message: str
    frames: int
    stream_time: float

    def __str__(self) -> str:
        return self.message


class FrameSource:
    """Base of every source: a single-use iterator of ``(frame, seconds)``; see the module docstring.

    Subclasses implement :meth:`_frames` (raw frames with their stream times, in order) and may override
    :meth:`_release` (free what the constructor opened).

    Args:
        name: how messages name the source (a path, a URL).
        speed: pace frames at ``speed`` x their stream time (1.0 = real time); ``None`` = as fast as possible.
        fps: keep at most this many frames per second of stream time; ``None`` keeps every frame.
        stall_timeout: seconds without a new frame after which the stream ends as ``"stalled"``; ``None``
            waits forever.

    Raises:
        ValueError: for a ``speed``, ``fps`` or ``stall_timeout`` that is not a positive number.
    """

    def __init__(self, name: str, *, speed: float | None, fps: float | None, stall_timeout: float | None):
        for flag, value in (("speed", speed), ("fps", fps), ("stall_timeout", stall_timeout)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{flag} must be a positive number or None, got {value!r}")
        self.name = name
        self.speed, self.fps, self.stall_timeout = speed, fps, stall_timeout
        self.end: SourceEnd | None = None
        self.frames_delivered = 0
        self.stream_time = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=_LOOKAHEAD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()  # the reader starts and close() looks at it one at a time
        self._reading_since: float | None = None  # monotonic time the reader started waiting on the source
        self._producer_end: tuple[str, str] | None = None

    # --- subclass hooks -------------------------------------------------------------------------------------
    def _frames(self) -> Iterator[tuple[object, float]]:
        """Raw ``(frame, seconds)`` items in stream order; a frame may be lazy (see :meth:`_to_array`)."""
        raise NotImplementedError

    def _to_array(self, frame) -> np.ndarray:
        """The ``(h, w, 3)`` uint8 RGB array of a raw frame (called only for frames that ``fps`` keeps)."""
        return frame

    def _release(self) -> None:
        """Free what the constructor opened (called once, from the reader thread or ``close``)."""

    # --- iteration ------------------------------------------------------------------------------------------
    def __iter__(self) -> FrameSource:
        return self

    def __next__(self) -> tuple[np.ndarray, float]:
        if self.end is not None:
            raise StopIteration
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None and self.end is None:
                    thread = threading.Thread(target=self._produce, name=f"source:{self.name}", daemon=True)
                    thread.start()
                    self._thread = thread
            if self._thread is None:  # closed meanwhile
                raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                if self.end is not None:  # closed meanwhile (from another thread)
                    raise StopIteration from None
                since = self._reading_since
                if self.stall_timeout is not None and since is not None:
                    waited = time.monotonic() - since
                    if waited > self.stall_timeout:
                        self._finish("stalled", f"no frame for {waited:.1f} s (stall timeout {self.stall_timeout:g} s)")
                        raise StopIteration from None
                continue
            if item is None:  # the reader finished; it left why in _producer_end
                self._finish(*self._producer_end)
                raise StopIteration
            frame, seconds = item
            self.frames_delivered += 1
            self.stream_time = seconds
            return frame, seconds

    def close(self) -> None:
        """Stop the stream (``end.reason == "stopped"`` unless it had already ended); safe to call twice."""
        if self.end is None:
            self._finish("stopped", "closed by the consumer")
        self._stop.set()
        with self._thread_lock:  # a consumer starting the reader right now has finished starting it
            thread = self._thread
        if thread is None:
            self._release()
        elif thread is not threading.current_thread():
            # Let the reader release its container before we return: a decoder torn down by interpreter exit
            # can abort the process. Bounded, since a live source may sit in a blocking read.
            thread.join(timeout=CLOSE_JOIN_SECONDS)

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the reader thread ----------------------------------------------------------------------------------
    def _produce(self) -> None:
        reason, detail = "ended", ""
        try:
            start_wall = None
            for frame, seconds in self._sampled():
                if self.speed is not None:
                    start_wall = time.monotonic() - seconds / self.speed if start_wall is None else start_wall
                    delay = start_wall + seconds / self.speed - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                if not self._put((self._to_array(frame), seconds)):
                    return
        except Exception as err:  # any failure mid-stream ends the stream, with the reason in one line
            reason, detail = self._ending(err)
        finally:
            self._reading_since = None
            self._release()
        self._producer_end = (reason, detail)
        self._put(None)

    def _sampled(self) -> Iterator[tuple[object, float]]:
        """Raw items, marking the time spent waiting on the source, thinned to ``fps``."""
        raw = iter(self._frames())
        next_due = -math.inf
        while not self._stop.is_set():
            self._reading_since = time.monotonic()
            try:
                frame, seconds = next(raw)
            except StopIteration:
                return
            finally:
                self._reading_since = None
            if self.fps is not None:
                if seconds + 1e-9 < next_due:
                    continue
                next_due = (math.floor(seconds * self.fps + 1e-6) + 1) / self.fps
            yield frame, seconds

    def _put(self, item) -> bool:
        """Hand one item to the consumer, waiting for room; False once the stream was stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _ending(self, err: Exception) -> tuple[str, str]:
        """``(reason, detail)`` of a failure of the source mid-stream."""
        return "broken", one_line(err)

    def _finish(self, reason: str, detail: str) -> None:
        self._stop.set()
        frames, at = self.frames_delivered, self.stream_time
        told = {
            "ended": "stream ended",
            "stalled": "stream stalled",
            "broken": "stream broke",
            "stopped": "stream stopped",
        }[reason]
        message = f"{self.name}: {told} after {frames} frame{'s' if frames != 1 else ''} ({at:.1f} s)"
        if detail:
            message += f": {detail}"
        if reason in ("stalled", "broken"):
            message += "; the frames delivered so far are kept"
        self.end = SourceEnd(reason, message, frames, at)


class _AVSource(FrameSource):
    """A source decoded by PyAV from an already opened container (files, cameras, network streams)."""

    def __init__(self, name: str, target: str, *, format: str | None = None, options: dict | None = None,
                 open_timeout: float | None = None, **kwargs):
        super().__init__(name, **kwargs)
        read_timeout = self.stall_timeout
        timeout = None if open_timeout is None and read_timeout is None else (open_timeout, read_timeout)
        self._recent: deque = deque(maxlen=_RECENT_LOG)
        with ffmpeg_log_scope() as messages:
            try:
                self._container = av.open(target, format=format, options=options or {}, timeout=timeout)
            except av.error.FFmpegError as err:
                said = ffmpeg_reason(messages)
                raise VideoError(name, f"FFmpeg cannot open it ({said or one_line(err.strerror or err)})",
                                 "check the path or URL, that the stream is up, and the format") from err
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(name, "it has no video stream", "pass a source with video in it")
        # PyAV's default slice threading: frame threading ("AUTO") would swallow the decode error of a corrupt
        # packet, so a broken stream would look like one that ended.
        self._stream = self._container.streams.video[0]

    def _frames(self) -> Iterator[tuple[av.VideoFrame, float]]:
        packets = self._container.demux(self._stream)
        first, count = None, 0
        rate = float(self._stream.average_rate or self._stream.guessed_rate or 0) or None
        while True:
            # FFmpeg may log only while a file is demuxed (see quiet.py), so each demux step gets its own scope.
            with ffmpeg_log_scope() as messages:
                try:
                    packet = next(packets)
                except StopIteration:
                    return
                finally:
                    self._recent.extend(messages)
            for frame in packet.decode():
                seconds = frame.time
                if seconds is None:  # no timestamp: number frames at the nominal rate
                    seconds = count / rate if rate else float(count)
                first = seconds if first is None else first
                count += 1
                yield frame, max(seconds - first, 0.0)

    def _to_array(self, frame: av.VideoFrame) -> np.ndarray:
        return frame.to_ndarray(format="rgb24")  # (h, w, 3)

    def _ending(self, err: Exception) -> tuple[str, str]:
        if isinstance(err, av.error.ExitError | av.error.TimeoutError):  # FFmpeg's read timeout interrupted it
            return "stalled", f"no data for {self.stall_timeout:g} s (stall timeout {self.stall_timeout:g} s)"
        said = ffmpeg_reason(list(self._recent))
        own = one_line(getattr(err, "strerror", None) or err)
        return "broken", f"{said} ({own})" if said and said not in own else own

    def _release(self) -> None:
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()


class VideoFileSource(_AVSource):
    """A video file (anything FFmpeg reads) played as a stream.

    Args:
        path: the video file.
        speed: 1.0 plays at real speed, ``N`` at N x, ``None`` as fast as frames decode.
        fps: keep at most this many frames per second of video (``None``: every frame).
        stall_timeout: see :class:`FrameSource`.

    Raises:
        VideoError: when the file is missing or FFmpeg cannot open it as a video (e.g. truncated before its
            index); a file that breaks later ends the stream as ``"broken"`` instead.
    """

    def __init__(self, path: str | Path, *, speed: float | None = 1.0, fps: float | None = None,
                 stall_timeout: float | None = None):
        path = Path(path)
        if not path.is_file():
            raise VideoError(path, "no such file", "check the path")
        check_opens(path)  # a file that is no video fails with FFmpeg's reason, quietly
        super().__init__(str(path), str(path), speed=speed, fps=fps, stall_timeout=stall_timeout)


class LiveSource(_AVSource):
    """A camera or a network stream (RTSP, HTTP(S), RTMP, UDP, ...) read through PyAV; it paces itself.

    Args:
        url: what FFmpeg opens: a URL, or a device such as ``/dev/video0``.
        format: FFmpeg input format, e.g. ``"v4l2"`` (Linux cameras), ``"avfoundation"`` (macOS) or
            ``"dshow"`` (Windows); ``None`` lets FFmpeg guess.
        options: FFmpeg options, e.g. ``{"rtsp_transport": "tcp"}`` or ``{"framerate": "30"}``.
        fps: keep at most this many frames per second of stream time.
        stall_timeout: seconds without data before the stream ends as ``"stalled"`` (also FFmpeg's read timeout).
        open_timeout: seconds to wait for the stream to open.
        speed: ``None`` for live input; a number paces a stream served faster than real time.

    Raises:
        VideoError: when FFmpeg cannot open it.
    """

    def __init__(self, url: str, *, format: str | None = None, options: dict | None = None,
                 fps: float | None = None, stall_timeout: float | None = 10.0, open_timeout: float | None = 10.0,
                 speed: float | None = None):
        super().__init__(url, url, format=format, options=options, open_timeout=open_timeout, speed=speed, fps=fps,
                         stall_timeout=stall_timeout)


class FrameFolderSource(FrameSource):
    """A folder of numbered frame images (``000012.jpg``, ``frame_12.png``, ...) at ``frames_fps``.

    Args:
        path: the folder.
        frames_fps: frame rate of the folder (it carries none); frame ``i`` is at ``i / frames_fps`` s.
        speed, fps, stall_timeout: see :class:`FrameSource`.

    Raises:
        VideoError: when the folder is missing or holds no numbered frame images.
    """

    def __init__(self, path: str | Path, *, frames_fps: float = 1.0, speed: float | None = 1.0,
                 fps: float | None = None, stall_timeout: float | None = None):
        super().__init__(str(path), speed=speed, fps=fps, stall_timeout=stall_timeout)
        if isinstance(frames_fps, bool) or not isinstance(frames_fps, (int, float)) or frames_fps <= 0:
            raise ValueError(f"frames_fps must be a positive number, got {frames_fps!r}")
        path = Path(path)
        if not path.is_dir():
            raise VideoError(path, "no such folder", "check the path")
        self._files = numbered_frames(path)
        self._frames_fps = float(frames_fps)
        self._size: tuple[int, int] | None = None

    def _frames(self) -> Iterator[tuple[Path, float]]:
        for i, file in enumerate(self._files):
            yield file, i / self._frames_fps

    def _to_array(self, file: Path) -> np.ndarray:
        rgb = load_image(file, self._size)  # a frame of another size is a VideoError: the stream breaks
        self._size = self._size or (rgb.shape[1], rgb.shape[0])
        return rgb


class ArraySource(FrameSource):
    """Frames from any Python iterable: arrays (``(h, w, 3)`` uint8) or ``(array, seconds)`` pairs.

    Args:
        items: the iterable (consumed lazily, on the reader thread).
        fps: frame rate of bare arrays (frame ``i`` at ``i / fps`` s); ``None`` stamps them with the wall-clock
            time since the first one (a live feed). Ignored for pairs.
        speed: pace by the stream times (``None``: as they come).
        sample_fps: keep at most this many frames per second of stream time.
        stall_timeout: see :class:`FrameSource`.
        name: how messages name it.
    """

    def __init__(self, items: Iterable, *, fps: float | None = None, speed: float | None = None,
                 sample_fps: float | None = None, stall_timeout: float | None = None, name: str = "frames"):
        super().__init__(name, speed=speed, fps=sample_fps, stall_timeout=stall_timeout)
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0):
            raise ValueError(f"fps must be a positive number or None, got {fps!r}")
        self._items, self._rate = items, fps

    def _frames(self) -> Iterator[tuple[np.ndarray, float]]:
        start = None
        for i, item in enumerate(self._items):
            if isinstance(item, tuple) and len(item) == 2:
                frame, seconds = item
            else:
                frame = item
                start = time.monotonic() if start is None else start
                seconds = i / self._rate if self._rate else time.monotonic() - start
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"item {i} is a {frame.dtype} array of shape {frame.shape}; frames must be uint8 "
                                 "RGB arrays (h, w, 3)")
            yield frame, float(seconds)


def open_source(spec: str, *, speed: float | None = 1.0, fps: float | None = None,
                stall_timeout: float | None = None, frames_fps: float = 1.0) -> FrameSource:
    """The source a ``--source`` string names.

    - ``scheme://...`` (rtsp, http, https, rtmp, udp, tcp, srt, ...): a :class:`LiveSource` (``speed`` ignored:
      the stream paces itself; ``stall_timeout`` defaults to 10 s);
    - ``camera:N`` (or ``camera:NAME`` on Windows) or ``/dev/videoN``: the camera, as a :class:`LiveSource`;
    - a folder: a :class:`FrameFolderSource` at ``frames_fps``;
    - a file: a :class:`VideoFileSource`.

    Raises:
        VideoError: for a path that does not exist or a source FFmpeg cannot open.
    """
    scheme = spec.partition("://")[0].lower() if "://" in spec else ""
    live_timeout = 10.0 if stall_timeout is None else stall_timeout
    if scheme and (scheme in URL_SCHEMES or scheme.isalpha()):
        return LiveSource(spec, fps=fps, stall_timeout=live_timeout)
    if spec.startswith("camera:") or spec.startswith("/dev/video"):
        device, format = _camera(spec)
        return LiveSource(device, format=format, fps=fps, stall_timeout=live_timeout)
    path = Path(spec)
    if path.is_dir():
        return FrameFolderSource(path, frames_fps=frames_fps, speed=speed, fps=fps, stall_timeout=stall_timeout)
    if path.is_file():
        return VideoFileSource(path, speed=speed, fps=fps, stall_timeout=stall_timeout)
    raise VideoError(spec, "no such file, folder, camera or URL",
                     "pass a video file, a frame folder, camera:0 or a stream URL (rtsp://, http://)")


def _camera(spec: str) -> tuple[str, str]:
    """``(device, FFmpeg format)`` of a camera spec on this platform."""
    if spec.startswith("/dev/video"):
        return spec, "v4l2"
    which = spec.partition(":")[2] or "0"
    if sys.platform.startswith("linux"):
        return f"/dev/video{which}", "v4l2"
    if sys.platform == "darwin":
        return which, "avfoundation"
    if sys.platform.startswith("win"):
        return f"video={which}", "dshow"
    raise VideoError(spec, f"no camera support on {sys.platform}", "pass the device through a stream URL instead")
