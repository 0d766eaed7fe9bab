"""Reading videos, folders of frames and single images as RGB ``uint8`` frame arrays.

``probe_video`` reads metadata only; ``read_video`` decodes the frames a ``FrameSampler`` (or an explicit
index list) asks for, and nothing else: a 1-fps sample of a two-hour film never holds the whole film.

Backends (``reference/benchmarks-and-ecosystem.md`` §3): decord (``decord2`` on Python 3.11+, same import
name) when it imports, PyAV otherwise; in ``"auto"`` mode a file decord cannot read (decord2 mis-sizes frames of
some widths, e.g. 96 px or under 64 px) is read again with PyAV. Both return bit-identical frames on the files we
test. The PyAV path first demuxes the stream once (packets only, no decoding) to learn every frame's timestamp
and the keyframes; frame ``k`` is the ``k``-th timestamp in presentation order, the numbering decord uses too.
It then decodes forward, seeking to a keyframe only when that skips frames, so sparse reads return exactly the frames a
sequential decode would.

Every problem with the input raises one exception type, ``VideoError``, naming the path, the reason and a fix.

Shapes: ``t`` frames, ``h`` x ``w`` pixels; frames are ``(t, h, w, 3)`` RGB ``uint8``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from flash_vstream.video.sampling import FrameSampler

__all__ = ["VideoClip", "VideoError", "VideoInfo", "probe_video", "read_video"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
BACKENDS = ("auto", "pyav", "decord")


class VideoError(ValueError):
    """A video, frame folder or image that cannot be read as asked; the message names the path and the fix."""

    def __init__(self, path: str | Path, reason: str, fix: str):
        self.path = str(path)
        super().__init__(f"{path}: {reason}. {fix}")


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` learns without decoding frames."""

    num_frames: int
    """Frames in the video (container metadata for video files; may exceed what decodes if truncated)."""

    fps: float
    """Frames per second (the stream's average rate; ``frames_fps`` for frame folders and images)."""

    duration: float
    """Nominal length in seconds, ``num_frames / fps`` (the value the sampling policies use)."""

    width: int
    """Frame width in pixels."""

    height: int
    """Frame height in pixels."""

    kind: str
    """"video" (a media file), "frames_dir" (a folder of numbered images) or "image" (one image file)."""


@dataclass(frozen=True, eq=False)
class VideoClip:
    """Decoded frames plus where they came from.

    >>> clip = read_video("assets/sample.mp4", FrameSampler("uniform", num_frames=4))  # doctest: +SKIP
    >>> clip.frames.shape  # doctest: +SKIP
    (4, 240, 320, 3)
    """

    frames: np.ndarray
    """``(t, h, w, 3)`` uint8 RGB frames, in the order of ``indices``."""

    indices: np.ndarray
    """``(t,)`` int64 index of each frame in the video (0-based, presentation order)."""

    timestamps: np.ndarray
    """``(t,)`` float64 seconds of each frame, ``indices / native_fps``."""

    native_fps: float
    """Frame rate of the source (``frames_fps`` for frame folders and images)."""

    total_frames: int
    """Frames the source holds (for video files: frames whose packets can be read)."""

    path: str = field(default="")
    """The path the clip was read from."""


def probe_video(path: str | Path, frames_fps: float = 1.0) -> VideoInfo:
    """Read a video's frame count, rate, duration and size without decoding its frames.

    Args:
        path: A video file, a folder of numbered frame images, or one image file.
        frames_fps: Frame rate assumed for frame folders and images (they carry none).

    Returns:
        The ``VideoInfo``. For video files ``num_frames`` comes from the container (counted from the packets
        when the container does not say); ``read_video`` counts readable packets and may find fewer.

    Raises:
        VideoError: If the path is missing or cannot be read as video, frames or an image.
    """
    source = _open_source(Path(path), backend="pyav", frames_fps=frames_fps, exact_count=False)
    try:
        n, fps = source.num_frames, source.fps
        return VideoInfo(n, fps, n / fps, source.width, source.height, source.kind)
    finally:
        source.close()


def read_video(
    path: str | Path,
    sampler: FrameSampler | None = None,
    indices: np.ndarray | list[int] | None = None,
    backend: str = "auto",
    frames_fps: float = 1.0,
) -> VideoClip:
    """Decode the frames of a video file, frame folder or image that a sampler (or an index list) selects.

    Args:
        path: A video file (anything FFmpeg reads), a folder of frame images (jpg/jpeg/png/webp, ordered by
            the last integer in the file name, e.g. ``000012.jpg`` or ``frame_12.png``) or one image file
            (a 1-frame video).
        sampler: Frame policy; ``None`` (with ``indices=None``) reads every frame.
        indices: Explicit 0-based frame indices, returned in the order given (repeats allowed). Exclusive
            with ``sampler``.
        backend: "auto" (decord if it imports, else PyAV), "pyav" or "decord"; frame folders and images
            ignore it.
        frames_fps: Frame rate of frame folders and images (they carry none), e.g. 1.0 for Flash-VStream's
            1-fps extractions or 3.0 for MVBench's ``frames_fps3`` folders.

    Returns:
        A ``VideoClip`` with ``(t, h, w, 3)`` uint8 RGB frames.

    Raises:
        VideoError: For a missing path, a file that is not a video or image, a video with no frames, an
            empty frame folder, indices outside the video, or frames that do not decode (corrupt or
            truncated file).
        ValueError: For a bad argument (unknown backend, both ``sampler`` and ``indices``, bad
            ``frames_fps``).
    """
    if sampler is not None and indices is not None:
        raise ValueError("Pass either `sampler` or `indices` to read_video, not both.")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
    try:
        return _read_with(Path(path), sampler, indices, backend, frames_fps)
    except VideoError:
        if backend != "auto" or not _decord_available() or not Path(path).is_file():
            raise
        # decord fails on some files PyAV reads (e.g. frames narrower than 64 px): "auto" means "whichever works".
        return _read_with(Path(path), sampler, indices, "pyav", frames_fps)


def _read_with(
    path: Path, sampler: FrameSampler | None, indices, backend: str, frames_fps: float
) -> VideoClip:
    source = _open_source(path, backend=backend, frames_fps=frames_fps, exact_count=True)
    try:
        total, fps = source.num_frames, source.fps
        if sampler is not None:
            wanted = sampler.indices(total, fps)
        elif indices is not None:
            wanted = _checked_indices(indices, total, path)
        else:
            wanted = np.arange(total, dtype=np.int64)
        unique, inverse = np.unique(wanted, return_inverse=True)
        frames = source.read(unique)[inverse]  # (t, h, w, 3)
    finally:
        source.close()
    return VideoClip(frames, wanted, wanted / fps, fps, total, str(path))


def _checked_indices(indices: np.ndarray | list[int], total: int, path: str | Path) -> np.ndarray:
    wanted = np.asarray(indices)
    if wanted.ndim != 1 or not np.issubdtype(wanted.dtype, np.integer):
        raise ValueError(f"`indices` must be a 1-D list of integers, got {wanted.dtype} {wanted.shape}.")
    if wanted.size == 0:
        raise ValueError("`indices` is empty; pass at least one frame index, or indices=None for all.")
    bad = wanted[(wanted < 0) | (wanted >= total)]
    if bad.size:
        raise VideoError(
            path,
            f"frame index {int(bad[0])} is outside the {total} frames that can be read",
            f"request indices in [0, {total - 1}]; if the file should hold more frames it is truncated or "
            "corrupt: re-download or re-encode it",
        )
    return wanted.astype(np.int64)


# --- sources: one small object per input kind, all with the same members ---------------------------------


def _open_source(path: Path, backend: str, frames_fps: float, exact_count: bool):
    """Open ``path`` as the right source; ``exact_count`` asks video files to count readable packets."""
    if isinstance(frames_fps, bool) or not isinstance(frames_fps, (int, float)) or not frames_fps > 0:
        raise ValueError(f"`frames_fps` must be a positive number, got {frames_fps!r}.")
    if not path.exists():
        raise VideoError(path, "no such file or directory", "check the path (and the data root it is under)")
    if path.is_dir():
        return _FrameDirSource(path, float(frames_fps))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return _ImageSource(path, float(frames_fps))
    if backend == "decord" or (backend == "auto" and _decord_available()):
        return _DecordSource(path)
    return _PyAVSource(path, exact_count)


def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def _load_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as ``(h, w, 3)`` uint8 RGB; ``size`` (w, h), when given, must match."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise VideoError(path, f"not a readable image ({err})", "replace or re-extract this file") from err
    if size is not None and (rgb.shape[1], rgb.shape[0]) != size:
        raise VideoError(
            path,
            f"frame is {rgb.shape[1]}x{rgb.shape[0]} but the first frame is {size[0]}x{size[1]}",
            "re-extract the frames at one size",
        )
    return rgb


class _ImageSource:
    """A single image, read as a 1-frame video at ``frames_fps``."""

    kind = "image"

    def __init__(self, path: Path, frames_fps: float):
        self.path, self.fps, self.num_frames = path, frames_fps, 1
        self._rgb = _load_image(path)
        self.height, self.width = self._rgb.shape[:2]

    def read(self, wanted: np.ndarray) -> np.ndarray:
        return np.repeat(self._rgb[None], len(wanted), axis=0)  # (t, h, w, 3)

    def close(self) -> None:
        pass


class _FrameDirSource:
    """A folder of frame images ordered by the last integer in each file name; only wanted files are read."""

    kind = "frames_dir"

    def __init__(self, path: Path, frames_fps: float):
        self.path, self.fps = path, frames_fps
        self._files = _numbered_frames(path)
        self.num_frames = len(self._files)
        with Image.open(self._files[0]) as first:
            self.width, self.height = first.size

    def read(self, wanted: np.ndarray) -> np.ndarray:
        size = (self.width, self.height)
        return np.stack([_load_image(self._files[i], size) for i in wanted])  # (t, h, w, 3)

    def close(self) -> None:
        pass


def _numbered_frames(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted by the last integer in their names; errors name the offending file."""
    images = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise VideoError(
            folder,
            "folder holds no frame images",
            f"put frames named like 000000.jpg in it (extensions: {', '.join(IMAGE_EXTENSIONS)})",
        )
    numbered: dict[int, Path] = {}
    for image in images:
        digits = re.findall(r"\d+", image.stem)
        if not digits:
            raise VideoError(image, "frame file name has no frame number", "rename it like 000012.jpg")
        number = int(digits[-1])
        if number in numbered:
            raise VideoError(
                image, f"frame number {number} is also used by {numbered[number].name}", "remove one of them"
            )
        numbered[number] = image
    return [numbered[n] for n in sorted(numbered)]


class _DecordSource:
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
        self.path, self._errors = path, (RuntimeError, decord.DECORDError)
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
            self.num_frames, self.fps = len(self._reader), float(self._reader.get_avg_fps())
        except self._errors as err:
            raise VideoError(path, f"decord cannot open it as a video ({err})", _NOT_A_VIDEO_FIX) from err
        _check_has_frames(path, self.num_frames, self.fps)

    def read(self, wanted: np.ndarray) -> np.ndarray:
        try:
            return self._reader.get_batch(wanted.tolist()).asnumpy()  # (t, h, w, 3)
        except self._errors as err:
            raise VideoError(self.path, f"frames do not decode ({err})", _CORRUPT_FIX) from err

    def close(self) -> None:
        self._reader = None


_NOT_A_VIDEO_FIX = "check that it is a video file (not text, an archive or a partial download)"
_CORRUPT_FIX = "the file is truncated or corrupt: re-download or re-encode it (e.g. with ffmpeg)"


def _check_has_frames(path: Path, num_frames: int, fps: float) -> None:
    if num_frames <= 0:
        raise VideoError(path, "video stream has no frames", "check the file; re-encode it if it plays")
    if not fps > 0:
        raise VideoError(path, f"frame rate is {fps}", "re-encode the file with a constant frame rate")


class _PyAVSource:
    """A video file read through PyAV: one demux pass builds a frame index, then wanted frames decode."""

    kind = "video"

    def __init__(self, path: Path, exact_count: bool):
        self.path = path
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoError(path, "file has no video stream", "pass a file with video in it")
                stream = container.streams.video[0]
                self.width, self.height = stream.codec_context.width, stream.codec_context.height
                self.fps = _stream_fps(stream)
                metadata_count = stream.frames
                if exact_count or metadata_count <= 0:
                    self._index = _FrameIndex.build(container, stream)
                    self.num_frames = self._index.num_frames
                else:
                    self.num_frames = metadata_count
        except av.error.FFmpegError as err:
            raise VideoError(path, f"FFmpeg cannot open it as a video ({err})", _NOT_A_VIDEO_FIX) from err
        _check_has_frames(path, self.num_frames, self.fps)

    def read(self, wanted: np.ndarray) -> np.ndarray:
        """Decode the sorted, unique frame indices ``wanted``; errors name the file."""
        index = self._index
        try:
            frames = self._decode(wanted, index, seek=True)
            if frames is None:  # a seek landed after its keyframe: start over without seeking
                frames = self._decode(wanted, index, seek=False)
        except _TimestampMismatch:  # frames carry timestamps the demuxer did not list: count them instead
            frames = self._decode(wanted, index.counted(), seek=False)
        if isinstance(frames, int):
            raise VideoError(
                self.path,
                f"frame {frames} does not decode although the container lists {index.num_frames} frames",
                _CORRUPT_FIX,
            )
        return frames

    def close(self) -> None:
        pass  # every read opens and closes its own container

    def _decode(self, wanted: np.ndarray, index: _FrameIndex, seek: bool) -> np.ndarray | int | None:
        """The frames, or the first index that never decoded (an int), or None if a seek went wrong."""
        slots = {int(i): k for k, i in enumerate(wanted)}
        out: np.ndarray | None = None
        done = np.zeros(len(wanted), dtype=bool)
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
                        out[slots[idx]], done[slots[idx]] = rgb, True
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
