"""Reading videos, folders of frames and single images as RGB ``uint8`` frame arrays.

``probe_video`` reads metadata only; ``read_video`` decodes the frames a ``FrameSampler`` (or an explicit
index list) asks for, and nothing else: a 1-fps sample of a two-hour film never holds the whole film.
``iter_video`` yields the same frames in chunks of at most ``chunk_size``, decoding each chunk only when it is
asked for, so a consumer that keeps only what it computes from a chunk holds one chunk of frames at a time.

Video files go through decord (``decord2`` on Python 3.11+, same import name) when it imports, PyAV otherwise
(``backends.py``); in ``"auto"`` mode a file decord cannot read (decord2 mis-sizes frames of some widths, e.g.
96 px or under 64 px) is read again with PyAV. Both return bit-identical frames on the files we test.

Every problem with the input raises one exception type, ``VideoError``, whose one-line message names the path,
the reason and a fix; FFmpeg's and decord's own log lines never reach the terminal (``quiet.py``). Long reads
can report progress: ``progress=True`` draws a bar on stderr, ``on_frames(done, total)`` feeds the caller's own.

Shapes: ``t`` frames, ``h`` x ``w`` pixels; frames are ``(t, h, w, 3)`` RGB ``uint8``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from flash_vstream.video.backends import DecordSource, PyAVSource, UnreadableVideo, decord_available
from flash_vstream.video.errors import VideoError, one_line
from flash_vstream.video.progress import FrameProgress, FramesCallback
from flash_vstream.video.sampling import FrameSampler

__all__ = ["VideoClip", "VideoError", "VideoInfo", "iter_video", "probe_video", "read_video"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
BACKENDS = ("auto", "pyav", "decord")


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
    progress: bool = False,
    on_frames: FramesCallback | None = None,
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
        progress: Draw a progress bar on stderr, labelled with the file name, while frames decode (only when
            at least ``PROGRESS_MIN_FRAMES`` distinct frames are wanted; shorter reads finish before it helps).
        on_frames: Called as ``on_frames(done, total)`` with ``total`` the distinct frames to decode: once
            with ``done=0``, then as frames decode, ``done`` never decreasing and ending at ``total``.

    Returns:
        A ``VideoClip`` with ``(t, h, w, 3)`` uint8 RGB frames.

    Raises:
        VideoError: For a missing path, a file that is not a video or image, a video with no frames, an
            empty frame folder, indices outside the video, or frames that do not decode (corrupt or
            truncated file).
        ValueError: For a bad argument (unknown backend, both ``sampler`` and ``indices``, bad
            ``frames_fps``, an ``on_frames`` that is not callable).
    """
    if sampler is not None and indices is not None:
        raise ValueError("Pass either `sampler` or `indices` to read_video, not both.")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
    path = Path(path)
    counter = FrameProgress(path.name, show=progress, on_frames=on_frames)
    try:
        try:
            return _read_with(path, sampler, indices, backend, frames_fps, counter)
        except UnreadableVideo:
            raise  # FFmpeg itself cannot open it: PyAV would fail the same way
        except VideoError:
            if backend != "auto" or not path.is_file() or not decord_available():
                raise
            # decord fails on some files PyAV reads (e.g. frames under 64 px wide): "auto" is "whichever works".
            return _read_with(path, sampler, indices, "pyav", frames_fps, counter)
    finally:
        counter.close()  # the bar goes before any error line or answer is printed


def iter_video(
    path: str | Path,
    sampler: FrameSampler | None = None,
    indices: np.ndarray | list[int] | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
    frames_fps: float = 1.0,
    progress: bool = False,
    on_frames: FramesCallback | None = None,
) -> Iterator[VideoClip]:
    """The frames ``read_video`` would return, as consecutive chunks of at most ``chunk_size`` frames.

    A chunk is decoded when the iterator is advanced to it, and the iterator keeps no reference to the chunks
    it has yielded, so peak memory is one chunk of frames whatever the video's length. Concatenating the
    chunks' ``frames``, ``indices`` and ``timestamps`` gives exactly ``read_video``'s (same arguments).

    Args:
        path: A video file, frame folder or image, as for :func:`read_video`.
        sampler: Frame policy, as for :func:`read_video`.
        indices: Explicit frame indices (in the order given), as for :func:`read_video`.
        chunk_size: Most frames per chunk (``>= 1``).
        backend: "auto", "pyav" or "decord", as for :func:`read_video`.
        frames_fps: Frame rate of frame folders and images.
        progress: Draw a progress bar on stderr over the whole read.
        on_frames: Called as ``on_frames(done, total)`` over the whole read; ``total`` sums each chunk's
            distinct frames.

    Yields:
        One ``VideoClip`` per chunk (``total_frames``, ``native_fps`` and ``path`` are the whole video's).

    Raises:
        VideoError: as ``read_video``: on opening (a missing or unreadable file, indices outside the video are
            found on the first ``next``), or when the chunk that holds an undecodable frame is reached.
        ValueError: for a bad argument (at the call).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")
    if sampler is not None and indices is not None:
        raise ValueError("Pass either `sampler` or `indices` to iter_video, not both.")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
    path = Path(path)
    counter = FrameProgress(path.name, show=progress, on_frames=on_frames)  # validates on_frames now
    try:
        source = _open_source(path, backend=backend, frames_fps=frames_fps, exact_count=True)
    except UnreadableVideo:
        raise
    except VideoError:
        if backend != "auto" or not path.is_file() or not decord_available():
            raise
        source = PyAVSource(path, exact_count=True)  # decord cannot open some files PyAV reads
    return _chunks(path, source, sampler, indices, chunk_size, backend, counter)


def _chunks(path: Path, source, sampler, indices, chunk_size: int, backend: str, counter: FrameProgress):
    """The generator behind :func:`iter_video` (arguments already checked, ``source`` open)."""
    try:
        total, fps = source.num_frames, source.fps
        wanted = _wanted_indices(source, sampler, indices, path)
        chunks = [wanted[start : start + chunk_size] for start in range(0, len(wanted), chunk_size)]
        counter.start(sum(len(np.unique(chunk)) for chunk in chunks))
        done = 0
        for chunk in chunks:
            unique, inverse = np.unique(chunk, return_inverse=True)
            step = _OffsetProgress(counter, done)
            try:
                frames = source.read(unique, step)
            except UnreadableVideo:
                raise
            except VideoError:
                # As read_video's "auto": decord fails on some files PyAV reads; PyAV gives the same frames.
                if backend != "auto" or isinstance(source, PyAVSource) or source.kind != "video":
                    raise
                source.close()
                source = PyAVSource(path, exact_count=True)
                frames = source.read(unique, step)
            done += len(unique)
            if not np.array_equal(unique, chunk):
                frames = frames[inverse]  # repeats or an unsorted order; the decoded array is released here
            yield VideoClip(frames, chunk, chunk / fps, fps, total, str(path))
            del frames  # from here the consumer holds the only reference to the chunk's frames
    finally:
        source.close()
        counter.close()


class _OffsetProgress:
    """Reports a chunk's decoded count as ``offset + done`` to the whole read's :class:`FrameProgress`."""

    def __init__(self, progress: FrameProgress, offset: int):
        self.progress, self.offset = progress, offset

    def advance_to(self, done: int) -> None:
        self.progress.advance_to(self.offset + done)


def _wanted_indices(source, sampler: FrameSampler | None, indices, path: Path) -> np.ndarray:
    """The frame indices to decode: the sampler's, the caller's (checked) or every frame."""
    if sampler is not None:
        return sampler.indices(source.num_frames, source.fps)
    if indices is not None:
        return _checked_indices(indices, source.num_frames, path)
    return np.arange(source.num_frames, dtype=np.int64)


def _read_with(
    path: Path, sampler: FrameSampler | None, indices, backend: str, frames_fps: float, counter: FrameProgress
) -> VideoClip:
    source = _open_source(path, backend=backend, frames_fps=frames_fps, exact_count=True)
    try:
        total, fps = source.num_frames, source.fps
        wanted = _wanted_indices(source, sampler, indices, path)
        unique, inverse = np.unique(wanted, return_inverse=True)
        counter.start(len(unique))
        frames = source.read(unique, counter)[inverse]  # (t, h, w, 3)
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
            f"request indices in [0, {total - 1}]; if the file should hold more frames, it is truncated or "
            "corrupt: re-download it or re-encode it",
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
    if path.stat().st_size == 0:
        raise UnreadableVideo(path, "file is empty (0 bytes)", "re-download or re-export it")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return _ImageSource(path, float(frames_fps))
    if backend == "decord" or (backend == "auto" and decord_available()):
        return DecordSource(path)
    return PyAVSource(path, exact_count)


_IMAGE_FIX = "replace it or extract it again"


def load_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as ``(h, w, 3)`` uint8 RGB; ``size`` (w, h), when given, must match."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError as err:
        raise VideoError(path, "not a readable image (Pillow does not recognise its format)", _IMAGE_FIX) from err
    except OSError as err:  # e.g. "image file is truncated"
        raise VideoError(path, f"not a readable image ({one_line(err)})", _IMAGE_FIX) from err
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
        self._rgb = load_image(path)
        self.height, self.width = self._rgb.shape[:2]

    def read(self, wanted: np.ndarray, progress: FrameProgress) -> np.ndarray:
        progress.advance_to(len(wanted))
        return np.repeat(self._rgb[None], len(wanted), axis=0)  # (t, h, w, 3)

    def close(self) -> None:
        pass


class _FrameDirSource:
    """A folder of frame images ordered by the last integer in each file name; only wanted files are read."""

    kind = "frames_dir"

    def __init__(self, path: Path, frames_fps: float):
        self.path, self.fps = path, frames_fps
        self._files = numbered_frames(path)
        self.num_frames = len(self._files)
        self.height, self.width = load_image(self._files[0]).shape[:2]

    def read(self, wanted: np.ndarray, progress: FrameProgress) -> np.ndarray:
        size = (self.width, self.height)
        frames = []
        for done, i in enumerate(wanted, start=1):
            frames.append(load_image(self._files[i], size))
            progress.advance_to(done)
        return np.stack(frames)  # (t, h, w, 3)

    def close(self) -> None:
        pass


def numbered_frames(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted by the last integer in their names; errors name the offending file."""
    entries = sorted(folder.iterdir())
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise VideoError(folder, _no_frames_reason(entries), _NO_FRAMES_FIX)
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


_NO_FRAMES_FIX = (
    f"pass a video file, an image, or a folder of frames named like 000000.jpg ({', '.join(IMAGE_EXTENSIONS)})"
)


def _no_frames_reason(entries: list[Path]) -> str:
    """Why a folder is not a frame folder, saying what it holds instead."""
    folders = [p.name for p in entries if p.is_dir()]
    files = [p.name for p in entries if not p.is_dir()]
    if not entries:
        return "folder is empty (a frame folder holds frame images)"
    held = [
        f"{len(names)} {kind}{'s' if len(names) > 1 else ''} (e.g. {names[0]})"
        for kind, names in (("other file", files), ("folder", folders))
        if names
    ]
    return f"folder holds no frame images, only {' and '.join(held)}"
