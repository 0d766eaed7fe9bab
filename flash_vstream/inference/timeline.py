"""Memory timelines: which moments of a stream a memory keeps, and small pictures of the frames it retrieved.

A :class:`Timeline` is read from a memory at one moment (the memory an answer used):

- ``clusters``: the temporal memory (STAR: the weighted k-means clusters; Flash: the CSM), each with the
  weighted-mean stream time of its members and its weight (the frames, or temporal patches, it stands for);
- ``retrieved``: the frames the memory put back at full detail (STAR: the retrieved frames; Flash: the DAM key
  frames, one per temporal patch, shown by its first frame), in the order the memory gives them;
- ``recent``: STAR's spatial window (the newest frames, kept whole); Flash has none;
- each frame carries a thumbnail: the kept thumbnail nearest to it (``thumbnail.frame == frame`` when exact).

The memories keep times and masses, not frame pixels, so a :class:`TimelineRecorder` beside the memory keeps what
the pictures need, bounded whatever the stream's length: a capped store of thumbnails (small uint8 images) and a
capped list of (frame, seconds) anchors that maps the memory's frame or temporal-patch indices to stream seconds.
Each store keeps every ``stride``-th frame and doubles the stride when full, so what it keeps stays spread evenly
over the whole stream (times are interpolated between anchors: exactly, for a stream of constant frame rate); the
newest frame is always kept too.

>>> recorder = TimelineRecorder()                                    # doctest: +SKIP
>>> recorder.add(frames, seconds)                                    # beside every memory.update
>>> timeline = read_timeline(vs, state, recorder)                    # doctest: +SKIP
>>> [(c.seconds, c.weight) for c in timeline.clusters]              # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = [
    "Thumbnail",
    "Timeline",
    "TimelineCluster",
    "TimelineFrame",
    "TimelineRecorder",
    "offline_timeline",
    "read_timeline",
]


@dataclass(frozen=True, eq=False)
class Thumbnail:
    """A small picture of one stream frame.

    Attributes:
        frame: the frame's stream index (0-based, in the order frames reached the memory).
        seconds: its stream time.
        image: ``(h, w, 3)`` uint8 RGB, at most ``thumbnail_side`` pixels on its longer side.
    """

    frame: int
    seconds: float
    image: np.ndarray


@dataclass(frozen=True)
class TimelineCluster:
    """One cluster of the temporal memory.

    Attributes:
        seconds: weighted-mean stream time of its members.
        weight: its mass: the frames (STAR) or temporal patches (Flash) it stands for.
    """

    seconds: float
    weight: float


@dataclass(frozen=True, eq=False)
class TimelineFrame:
    """A frame the memory keeps at full detail.

    Attributes:
        frame: stream index of the frame (Flash: the first frame of the temporal patch).
        seconds: its stream time.
        thumbnail: the kept thumbnail nearest to it, or ``None`` when none is kept.
    """

    frame: int
    seconds: float
    thumbnail: Thumbnail | None


@dataclass(frozen=True, eq=False)
class Timeline:
    """What a memory holds at one moment, on the stream's time axis. See the module docstring.

    Attributes:
        family: the model family (``"star"``, ``"flash"``).
        num_frames: frames folded into the memory (a Flash pad frame counts).
        start_seconds: stream time of the first frame.
        end_seconds: stream time of the newest frame.
        clusters: the temporal memory, in time order.
        retrieved: the retrieved (STAR) or DAM key (Flash) frames, in the memory's order.
        recent: STAR's spatial window, oldest first (Flash: empty).
    """

    family: str
    num_frames: int
    start_seconds: float
    end_seconds: float
    clusters: tuple[TimelineCluster, ...]
    retrieved: tuple[TimelineFrame, ...]
    recent: tuple[TimelineFrame, ...]

    def to_dict(self) -> dict:
        """A JSON-ready dict; frames name their thumbnail by its frame index (``thumbnail``, or ``None``)."""

        def frames(items):
            return [{"frame": f.frame, "seconds": round(f.seconds, 3),
                     "thumbnail": None if f.thumbnail is None else f.thumbnail.frame} for f in items]

        return {
            "family": self.family, "num_frames": self.num_frames,
            "start_seconds": round(self.start_seconds, 3), "end_seconds": round(self.end_seconds, 3),
            "clusters": [{"seconds": round(c.seconds, 3), "weight": round(c.weight, 3)} for c in self.clusters],
            "retrieved": frames(self.retrieved), "recent": frames(self.recent),
        }


class TimelineRecorder:
    """Keeps, beside a memory, what its timeline needs: capped thumbnails and frame-to-seconds anchors.

    Feed it every frame the memory folds in, in order (:meth:`add`); it never holds the frames themselves. Both
    stores keep the frames whose index is a multiple of a stride (1 at first); when a store is full its stride
    doubles and every other entry goes, so what is kept stays spread evenly over the whole stream. The newest
    frame's thumbnail and time are always kept as well.

    Args:
        max_thumbnails: most thumbnails kept at the stride (>= 1; one more for the newest frame).
        thumbnail_side: longer side of a thumbnail in pixels (>= 8).
        max_anchors: most (frame, seconds) anchors kept at the stride (>= 2; one more for the newest frame).

    Raises:
        ValueError: for a bad size.
    """

    def __init__(self, max_thumbnails: int = 256, thumbnail_side: int = 64, max_anchors: int = 4096):
        for name, value, least in (("max_thumbnails", max_thumbnails, 1), ("thumbnail_side", thumbnail_side, 8),
                                   ("max_anchors", max_anchors, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"TimelineRecorder: {name} must be an integer >= {least}, got {value!r}")
        self.max_thumbnails, self.thumbnail_side, self.max_anchors = max_thumbnails, thumbnail_side, max_anchors
        self.frames = 0
        self._thumbs: list[Thumbnail] = []  # frames at multiples of _thumb_stride, increasing
        self._thumb_stride = 1
        self._newest: Thumbnail | None = None
        self._anchors: list[tuple[int, float]] = []  # frames at multiples of _anchor_stride
        self._anchor_stride = 1
        self._last: tuple[int, float] | None = None

    def add(self, frames: np.ndarray, seconds, real=None) -> None:
        """Record ``(t, H, W, 3)`` uint8 frames the memory folds in next, at ``seconds`` ``(t,)``.

        Args:
            frames: the frames, in stream order.
            seconds: their stream times.
            real: ``(t,)`` bools, False for a pad frame (Flash: a copy closing an odd temporal patch), which
                gets a time but no thumbnail; default all real.
        """
        seconds = np.atleast_1d(np.asarray(seconds, dtype=np.float64))
        real = np.ones(len(frames), dtype=bool) if real is None else np.asarray(real, dtype=bool)
        for frame, at, keep in zip(frames, seconds, real, strict=True):
            index, at = self.frames, float(at)
            self.frames += 1
            self._last = (index, at)
            self._anchor_stride = _keep_strided(self._anchors, (index, at), index, self._anchor_stride,
                                                self.max_anchors)
            if keep:
                self._newest = Thumbnail(index, at, self._shrink(frame))
                self._thumb_stride = _keep_strided(self._thumbs, self._newest, index, self._thumb_stride,
                                                   self.max_thumbnails)

    def _shrink(self, frame: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(frame))
        image.thumbnail((self.thumbnail_side, self.thumbnail_side), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).copy()  # (h, w, 3), owns its bytes

    @property
    def thumbnails(self) -> list[Thumbnail]:
        """The kept thumbnails, oldest first (the newest frame's included)."""
        if self._newest is None or (self._thumbs and self._thumbs[-1] is self._newest):
            return list(self._thumbs)
        return [*self._thumbs, self._newest]

    def _anchor_points(self) -> tuple[list[int], list[float]]:
        points = self._anchors if not self._anchors or self._anchors[-1] == self._last else [*self._anchors,
                                                                                             self._last]
        return [f for f, _ in points], [s for _, s in points]

    def seconds_at(self, positions) -> np.ndarray:
        """Stream seconds at frame positions (floats allowed), interpolated over the anchors, clamped to the ends.

        Raises:
            ValueError: before any frame was recorded.
        """
        if self._last is None:
            raise ValueError("TimelineRecorder: no frame recorded yet; add() the frames the memory folds in")
        frames, seconds = self._anchor_points()
        return np.interp(np.asarray(positions, dtype=np.float64), frames, seconds)

    def thumbnail_near(self, frame: int) -> Thumbnail | None:
        """The kept thumbnail whose frame is nearest to ``frame`` (the earlier one on a tie), or ``None``."""
        thumbnails = self.thumbnails
        if not thumbnails:
            return None
        kept = np.array([t.frame for t in thumbnails])
        return thumbnails[int(np.abs(kept - frame).argmin())]

    def thumbnail(self, frame: int) -> Thumbnail | None:
        """The thumbnail of exactly ``frame``, or ``None`` when it is not kept."""
        for thumb in self.thumbnails:
            if thumb.frame == frame:
                return thumb
        return None

    @property
    def num_anchors(self) -> int:
        return len(self._anchor_points()[0])

    def nbytes(self) -> int:
        """Bytes of the thumbnails' pixels (bounded by ``max_thumbnails * thumbnail_side**2 * 3``)."""
        return sum(t.image.nbytes for t in self.thumbnails)

    def frame_at(self, recorder_frame: int) -> TimelineFrame:
        """A :class:`TimelineFrame` for a frame index, with its time and nearest thumbnail."""
        return TimelineFrame(int(recorder_frame), float(self.seconds_at(recorder_frame)),
                             self.thumbnail_near(int(recorder_frame)))


def _keep_strided(kept: list, item, index: int, stride: int, cap: int) -> int:
    """Append ``item`` (of frame ``index``) to ``kept`` when ``index`` is on the stride; returns the stride.

    ``kept`` holds the frames at multiples of ``stride`` from frame 0; when it is full the stride doubles and
    every other entry goes (in place).
    """
    if index % stride:
        return stride
    if len(kept) == cap:
        stride *= 2
        kept[:] = kept[::2]
        if index % stride:
            return stride
    kept.append(item)
    return stride


# --- reading a memory ----------------------------------------------------------------------------------------

def _values(tensor) -> list[float]:
    return [] if tensor is None else torch.as_tensor(tensor).detach().float().cpu().tolist()


def _build(family: str, recorder: TimelineRecorder, num_frames: int, clusters, retrieved, recent) -> Timeline:
    """Assemble a timeline from ``(seconds, weight)`` pairs and frame indices, sorting clusters by time."""
    first, last = recorder.seconds_at([0, max(num_frames - 1, 0)])
    return Timeline(
        family=family, num_frames=num_frames, start_seconds=float(first), end_seconds=float(last),
        clusters=tuple(TimelineCluster(float(s), float(w)) for s, w in sorted(clusters)),
        retrieved=tuple(recorder.frame_at(int(i)) for i in retrieved),
        recent=tuple(recorder.frame_at(int(i)) for i in recent),
    )


def _star_timeline(extras: dict, recorder: TimelineRecorder, num_frames: int, *, seconds_axis: bool) -> Timeline:
    """STAR extras: cluster times (seconds, or frame positions without ``seconds_axis``) and weights; frame ids."""
    times = _values(extras.get("temporal_times"))
    if not seconds_axis:
        times = recorder.seconds_at(times).tolist() if times else []
    clusters = list(zip(times, _values(extras.get("temporal_weights")), strict=True))
    retrieved = [int(i) for i in _values(extras.get("retrieved_frames"))]
    recent = _values(extras.get("spatial_frames"))
    if "spatial_frames" not in extras:  # offline compress: the history (the clusters' mass) comes first
        recent = range(round(sum(w for _, w in clusters)), num_frames)
    return _build("star", recorder, num_frames, clusters, retrieved, [int(i) for i in recent])


def _flash_timeline(extras: dict, recorder: TimelineRecorder, num_frames: int, step: int) -> Timeline:
    """Flash: CSM times and DAM times are temporal-patch indices; patch ``p`` starts at frame ``p * step``."""
    patch_times = _values(extras.get("csm_timestamps"))
    seconds = recorder.seconds_at([p * step for p in patch_times]).tolist() if patch_times else []
    clusters = list(zip(seconds, _values(extras.get("csm_weights")), strict=True))
    retrieved = [int(round(p)) * step for p in _values(extras.get("dam_times"))]
    return _build("flash", recorder, num_frames, clusters, retrieved, [])


def read_timeline(vs, state, recorder: TimelineRecorder) -> Timeline | None:
    """The timeline of a streaming memory state (a ``read`` of it, which leaves it unchanged).

    Args:
        vs: the loaded model (``FlashVStream``) the state belongs to.
        state: its memory state (``StarState`` or ``FlashMemoryState``), at least one frame folded in.
        recorder: the recorder fed with every frame folded into ``state``.

    Returns:
        The timeline, or ``None`` for a model of another family (or no model, as in tests with fake backends).
    """
    family = getattr(vs, "family", None)
    if family == "star":
        out = vs.model.memory.read(state)
        return _star_timeline(out.extras, recorder, state.frames_seen, seconds_axis=True)
    if family == "flash":
        out = vs.model.flash_memory.read(state)
        step = int(vs.model.config.vision_config.temporal_patch_size)
        return _flash_timeline(out.extras, recorder, state.frames_seen, step)
    return None


@torch.inference_mode()
def offline_timeline(vs, *, frames: np.ndarray | None = None, features: torch.Tensor | None = None,
                     video=None, timestamps=None) -> Timeline | None:
    """The timeline of the memory an offline answer uses (``FlashVStream.answer``): the clip's ``compress``.

    The memory is recomputed from the same inputs (``compress`` is deterministic): STAR from ``features`` (or
    from CLIP features of ``frames``, a second vision pass), Flash from its vision tower's features of
    ``frames`` (a second pass). Thumbnails come from ``frames``, or from ``video`` decoded once more, in
    chunks, with the model's sampler.

    Args:
        vs: the loaded model.
        frames: the ``(T, H, W, 3)`` uint8 frames the answer saw.
        features: STAR: the (pooled) features the answer saw, instead of ``frames``.
        video: the video the answer read (for thumbnails and times when ``frames`` is not given).
        timestamps: seconds of each of ``frames`` or ``features`` (default: their positions); a ``video``
            gives its own.

    Returns:
        The timeline, or ``None`` for another family.
    """
    recorder = TimelineRecorder()
    if video is not None:
        from flash_vstream.video.reader import iter_video

        for clip in iter_video(video, sampler=vs.sampler, chunk_size=64):  # the frames the answer's reader saw
            recorder.add(clip.frames, clip.timestamps)
    elif frames is not None:
        recorder.add(frames, np.arange(len(frames), dtype=np.float64) if timestamps is None else timestamps)
    else:
        count = len(features)
        recorder.add(np.zeros((count, 1, 1, 3), np.uint8),
                     np.arange(count, dtype=np.float64) if timestamps is None else timestamps, np.zeros(count, bool))
    if vs.family == "star":
        memory = vs.model.memory
        weight = next(memory.parameters())
        if features is None:
            features = vs.model.encode_frames(vs.input_builder.processor(frames))  # (t, p*p, d)
        out = memory.compress(features.to(device=weight.device, dtype=weight.dtype))
        return _star_timeline(out.extras, recorder, len(features), seconds_axis=False)
    if vs.family == "flash":
        pixels, grid = vs.input_builder.frame_processor(frames)
        dual = vs.model.dual_resolution_features(pixels.to(vs.device), grid.to(vs.device))[0]
        out = vs.model.flash_memory.compress(dual)
        step = int(vs.model.config.vision_config.temporal_patch_size)
        return _flash_timeline(out.extras, recorder, len(frames), step)
    return None
