"""Video-file backends for ``read_video``: decord's ``VideoReader`` and PyAV, returning the same frames.

decord (``decord2`` on Python 3.11+, same import name) is fast at random access; PyAV reads everything FFmpeg
does. The PyAV path first demuxes the stream once (packets only, no decoding) to learn every frame's timestamp
and the keyframes; frame ``k`` is the ``k``-th timestamp in presentation order, the numbering decord uses too.
It then decodes forward, seeking to a keyframe only when that skips frames, so sparse reads return exactly the
frames a sequential decode would.

Neither backend lets FFmpeg print to the terminal (see ``quiet.py``): FFmpeg's messages become the reason of
the ``VideoError`` raised instead.

Shapes: ``t`` frames, ``h`` x ``w`` pixels; frames are ``(t, h, w, 3)`` RGB ``uint8``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from flash_vstream.video.errors import CORRUPT_FIX, NOT_A_VIDEO_FIX, VideoError, one_line
from flash_vstream.video.progress import FrameProgress
from flash_vstream.video.quiet import captured_stderr, decord_reason, ffmpeg_log_scope, ffmpeg_reason

__all__ = ["DecordSource", "PyAVSource", "UnreadableVideo", "decord_available"]

# decord decodes a whole get_batch call before returning; batches this size let progress advance meanwhile.
_DECORD_BATCH = 32
_DECORD_FIX = (
    "read it with backend='pyav' (decord fails on some valid files); if PyAV fails too, the file is truncated "
    "or corrupt: re-download it or re-encode it"
)


class UnreadableVideo(VideoError):
    """FFmpeg itself cannot open the file, so no backend can: ``backend="auto"`` does not retry it."""


def decord_available() -> bool:
    """Whether ``import decord`` works (``decord2`` provides it on Python 3.11+)."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def _cannot_open(path: Path, err: av.error.FFmpegError, messages: list) -> UnreadableVideo:
    """The error for a file FFmpeg cannot open, with FFmpeg's own explanation when it logged one."""
    said, status = ffmpeg_reason(messages), one_line(err.strerror or err)
    detail = f": {said} ({status})" if said else f" ({status})"
    fix = "check the file's permissions" if isinstance(err, PermissionError) else NOT_A_VIDEO_FIX
    return UnreadableVideo(path, f"FFmpeg cannot open it as a video{detail}", fix)


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise UnreadableVideo(path, "file has no video stream", "pass a file with video in it")
    return container.streams.video[0]


def _check_has_frames(path: Path, num_frames: int, fps: float) -> None:
    if num_frames <= 0:
        raise UnreadableVideo(path, "video stream has no frames", "check the file; re-encode it if it plays")
    if not fps > 0:
        raise UnreadableVideo(path, f"frame rate is {fps}", "re-encode the file with a constant frame rate")


def check_opens(path: Path) -> None:
    """Open ``path``'s header with quiet PyAV, so a file that is not a video fails with FFmpeg's reason."""
    with ffmpeg_log_scope() as messages:
        try:
            with av.open(str(path)) as container:
                _video_stream(container, path)
        except av.error.FFmpegError as err:
            raise _cannot_open(path, err, messages) from err


class DecordSource:
    """A video file read through decord's ``VideoReader`` (``get_batch`` on the wanted frames only)."""

    kind = "video"

    def __init__(self, path: Path):
        try:
            import decord
        except ImportError as err:
            raise ValueError(
                "backend='decord' needs the `decord` module: `pip install decord2` (Python >= 3.11) or "
                "`pip install decord` (3.10), or use backend='pyav'."
            ) from err
        # decord's FFmpeg logs to fd 2 about files it cannot parse: let quiet PyAV turn those away first.
        check_opens(path)
        self.path, self._errors = path, (RuntimeError, decord.DECORDError)
        self._reader = self._quietly("decord cannot open it", decord.VideoReader, str(path), ctx=decord.cpu(0))
        self.num_frames, self.fps = len(self._reader), float(self._reader.get_avg_fps())
        _check_has_frames(path, self.num_frames, self.fps)

    def read(self, wanted: np.ndarray, progress: FrameProgress) -> np.ndarray:
        """Decode the sorted, unique frame indices ``wanted``, ``_DECORD_BATCH`` at a time."""
        out: np.ndarray | None = None
        for start in range(0, len(wanted), _DECORD_BATCH):
            batch = wanted[start : start + _DECORD_BATCH].tolist()
            frames = self._quietly("frames do not decode", self._reader.get_batch, batch).asnumpy()  # (b, h, w, 3)
            if out is None:
                out = np.empty((len(wanted), *frames.shape[1:]), dtype=np.uint8)  # (t, h, w, 3)
            out[start : start + len(batch)] = frames
            progress.advance_to(start + len(batch))
        return out

    def close(self) -> None:
        self._reader = None

    def _quietly(self, what: str, call: Callable, *args, **kwargs):
        """``call(*args, **kwargs)`` with fd 2 captured; a decord failure becomes a VideoError quoting FFmpeg."""
        with captured_stderr() as logged:
            try:
                return call(*args, **kwargs)
            except self._errors as err:
                failure = err
        raise VideoError(self.path, f"{what} ({decord_reason(failure, logged)})", _DECORD_FIX) from failure


class PyAVSource:
    """A video file read through PyAV: one demux pass builds a frame index, then wanted frames decode."""

    kind = "video"

    def __init__(self, path: Path, exact_count: bool):
        self.path = path
        with ffmpeg_log_scope() as messages:
            try:
                with av.open(str(path)) as container:
                    stream = _video_stream(container, path)
                    self.width, self.height = stream.codec_context.width, stream.codec_context.height
                    self.fps = _stream_fps(stream)
                    metadata_count = stream.frames
                    if exact_count or metadata_count <= 0:
                        self._index = _FrameIndex.build(container, stream)
                        self.num_frames = self._index.num_frames
                    else:
                        self.num_frames = metadata_count
            except av.error.FFmpegError as err:
                raise _cannot_open(path, err, messages) from err
            self._said = ffmpeg_reason(messages)  # e.g. "partial file": explains frames that will not decode
        _check_has_frames(path, self.num_frames, self.fps)

    def read(self, wanted: np.ndarray, progress: FrameProgress) -> np.ndarray:
        """Decode the sorted, unique frame indices ``wanted``; errors name the file."""
        index = self._index
        try:
            try:
                frames = self._decode(wanted, index, progress, seek=True)
                if frames is None:  # a seek landed after its keyframe: start over without seeking
                    frames = self._decode(wanted, index, progress, seek=False)
            except _TimestampMismatch:  # frames carry timestamps the demuxer did not list: count them instead
                frames = self._decode(wanted, index.counted(), progress, seek=False)
        except av.error.FFmpegError as err:
            raise VideoError(self.path, f"decoding fails ({one_line(err.strerror or err)})", CORRUPT_FIX) from err
        if isinstance(frames, int):
            said = f" (FFmpeg: {self._said})" if self._said else ""
            raise VideoError(
                self.path,
                f"frame {frames} does not decode although the container lists {index.num_frames} frames{said}",
                CORRUPT_FIX,
            )
        return frames

    def close(self) -> None:
        pass  # every read opens and closes its own container

    def _decode(
        self, wanted: np.ndarray, index: _FrameIndex, progress: FrameProgress, seek: bool
    ) -> np.ndarray | int | None:
        """The frames, or the first index that never decoded (an int), or None if a seek went wrong."""
        slots = {int(i): k for k, i in enumerate(wanted)}
        out: np.ndarray | None = None
        done = np.zeros(len(wanted), dtype=bool)
        filled = 0
        plan = _plan_reads(wanted, index.keyframes if seek else [0])
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = None
            for seek_to, last_target in plan:
                if seek_to is not None:
                    container.seek(index.pts[seek_to], stream=stream, backward=True, any_frame=False)
                if frames is None or seek_to is not None:
                    frames = _decoded_frames(container, stream, index, start=seek_to or 0)
                for idx, frame in frames:
                    if idx in slots:
                        rgb = frame.to_ndarray(format="rgb24")  # (h, w, 3)
                        if out is None:
                            out = np.empty((len(wanted), *rgb.shape), dtype=np.uint8)  # (t, h, w, 3)
                        if rgb.shape != out.shape[1:]:
                            raise VideoError(
                                self.path, "frame size changes inside the stream", "re-encode it at one size"
                            )
                        slot = slots[idx]
                        filled += not done[slot]  # a frame decoded twice (after a seek) counts once
                        out[slot], done[slot] = rgb, True
                        progress.advance_to(filled)
                    if idx >= last_target:
                        break
        if done.all():
            return out
        if seek and any(seek_to is not None for seek_to, _ in plan):
            return None
        return int(wanted[np.argmin(done)])


def _stream_fps(stream) -> float:
    """Average frame rate of a PyAV stream, falling back to FFmpeg's guess."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return 0.0


class _TimestampMismatch(Exception):
    """A decoded frame's timestamp is not in the demuxed index; numbering by timestamp is not possible."""


@dataclass(frozen=True)
class _FrameIndex:
    """Presentation timestamps of every frame (sorted: position == frame index) and the keyframe indices."""

    num_frames: int
    """Video packets that could be read."""

    pts: list[int]
    """Sorted packet timestamps (empty when numbering by timestamp is impossible)."""

    keyframes: list[int]
    """Sorted frame indices of keyframes; ``[0]`` when seeking is not possible."""

    @property
    def by_pts(self) -> bool:
        return len(self.pts) == self.num_frames

    @classmethod
    def build(cls, container, stream) -> _FrameIndex:
        """Demux (no decoding) every video packet; a damaged tail ends the index where reading stops."""
        stamps, key_stamps, count = [], [], 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # flush packet / dropped by an edit list
                    continue
                count += 1
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is not None:
                    stamps.append(stamp)
                    if packet.is_keyframe:
                        key_stamps.append(stamp)
        except av.error.FFmpegError:
            pass  # truncated or damaged: keep the packets read so far; missing frames are reported on read
        stamps.sort()
        if len(stamps) != count or len(set(stamps)) != count:
            return cls(count, [], [0])
        position = {stamp: i for i, stamp in enumerate(stamps)}
        return cls(count, stamps, sorted(position[s] for s in key_stamps) or [0])

    def counted(self) -> _FrameIndex:
        """The same frames, numbered by decode order instead of timestamp (no seeking)."""
        return _FrameIndex(self.num_frames, [], [0])


def _plan_reads(wanted: np.ndarray, keyframes: list[int]) -> list[tuple[int | None, int]]:
    """Split sorted, unique ``wanted`` frames into decode runs: ``(keyframe to seek to or None, last frame)``.

    A run seeks only when a keyframe lies beyond the frame after the previous run's last one, so the seek
    skips frames; otherwise decoding just continues forward. Frames inside a run are read on the way.
    """
    runs: list[tuple[int | None, int]] = []
    previous = -1
    for target in (int(t) for t in wanted):
        keyframe = keyframes[max(bisect.bisect_right(keyframes, target) - 1, 0)]
        if keyframe > previous + 1 and keyframe <= target:
            runs.append((keyframe, target))
        elif runs:
            runs[-1] = (runs[-1][0], target)
        else:
            runs.append((None, target))
        previous = target
    return runs


def _decoded_frames(container, stream, index: _FrameIndex, start: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decoded frames from the container's position as ``(frame index, frame)``, from ``start`` on.

    Packets that fail to decode are skipped, so their frames are simply missing (reported by the caller).
    """
    position = {stamp: i for i, stamp in enumerate(index.pts)} if index.by_pts else None
    counter = start
    for packet in container.demux(stream):
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            continue
        for frame in decoded:
            if position is None:
                idx, counter = counter, counter + 1
            elif frame.pts in position:
                idx = position[frame.pts]
            else:
                raise _TimestampMismatch()
            if idx >= start:
                yield idx, frame
