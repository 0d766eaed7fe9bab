"""Baseline memories at the STAR memory's visual-token budget: uniform sampling, spatial memory alone, a FIFO window.

The synthetic memory benchmark (``eval run --benchmark synth-memory``, ``docs/synth_memory.md``) compares a model's
STAR memory with three simpler ways of spending the same number of visual tokens, each a :class:`VideoMemory` on
the shared contract (``init_state``/``update``/``read``/``compress``/``num_tokens``), fed the same per-frame CLIP
features and read out for the same projector and decoder:

- :class:`UniformFrameMemory`: ``N`` frames evenly spaced over the whole stream, whose length it is told up front
  (what an offline sampler does with a video file), given to the model's own offline memory (``compress``);
- :class:`FifoFrameMemory`: the newest ``N`` frames (a FIFO window), given to the model's offline memory;
- :class:`SpatialOnlyMemory`: STAR's spatial memory alone, sized to the budget: the newest ``N_s`` frames pooled to
  the spatial grid, nothing else.

For the two frame selectors, ``N`` is the fewest frames on which the offline STAR memory already gives its full
budget (:func:`frames_at_budget`: ``spatial_frames + max(temporal_clusters, abstract_slots)``, 11 for the demo
model, 26 as released): the tokens are exactly the budget, in the layout the model was trained on
(``[abstract; temporal; retrieved; spatial]``), and where ``temporal_clusters == abstract_slots`` (the released and
the demo sizes) every selected frame keeps its own temporal cluster and abstract slot, as in a short clip.
The spatial-only memory keeps ``N_s = budget // spatial_size**2`` frames, ``N_s * spatial_size**2`` tokens (192
of the demo model's 202: the most whole frames that fit). :func:`budget_memory` builds any of them by name.

Shapes: t: frames, p: input grid side, S: spatial grid side, d: feature dim, N: frames kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flash_vstream.memory.base import MemoryOutput, MemoryState, VideoMemory, frame_times, require_int
from flash_vstream.memory.pooling import pool_grid
from flash_vstream.memory.star import StarMemory
from flash_vstream.video.sampling import uniform_indices

__all__ = ["BASELINE_MEMORIES", "FifoFrameMemory", "FrameState", "SpatialOnlyMemory", "UniformFrameMemory",
           "budget_memory", "frames_at_budget", "star_budget"]

BASELINE_MEMORIES = ("uniform", "spatial", "fifo")
"""Names :func:`budget_memory` builds besides ``"star"`` (the model's own memory)."""
_LONG_STREAM = 1 << 20  # frames: far beyond any memory's saturation point


def star_budget(star: StarMemory) -> int:
    """The STAR memory's visual tokens on a long stream (its fixed size: 681 as released, 202 for the demo)."""
    return star.num_tokens(_LONG_STREAM)


def frames_at_budget(star: StarMemory) -> int:
    """The fewest frames on which ``star``'s offline memory gives :func:`star_budget` tokens."""
    cfg = star.config
    # Below it the history is shorter than the clusters or the abstract slots, so the read-out is smaller.
    return cfg.spatial_frames + max(cfg.temporal_clusters, cfg.abstract_slots)


@dataclass
class FrameState(MemoryState):
    """Streaming state of the frame baselines: the kept frames, preallocated, oldest first.

    Attributes:
        frames: ``(N, S*S, d)`` kept frames pooled to the spatial grid; rows ``[:count]`` valid.
        frame_ids: ``(N,)`` int64 stream index of each kept frame.
        frame_times: ``(N,)`` float32 timestamp of each kept frame.
        count: valid rows.
        frames_seen: frames pushed so far.
    """

    frames: torch.Tensor
    frame_ids: torch.Tensor
    frame_times: torch.Tensor
    count: int = 0
    frames_seen: int = 0

    def device_tensors(self) -> list[torch.Tensor]:
        return [self.frames, self.frame_ids, self.frame_times]


class _KeptFrames(VideoMemory[FrameState]):
    """Shared part of the baselines: ``N`` kept frames pooled to a ``S x S`` grid; subclasses choose which.

    Args:
        num_frames: N, frames kept.
        spatial_size: S, the pooled grid side.
        feature_grid: p, the input patch grid side.
        feature_dim: d, the input channels.
    """

    def __init__(self, num_frames: int, spatial_size: int, feature_grid: int, feature_dim: int):
        super().__init__()
        for name, value in (("num_frames", num_frames), ("spatial_size", spatial_size),
                            ("feature_grid", feature_grid), ("feature_dim", feature_dim)):
            require_int(name, value, minimum=1)
        if feature_grid % spatial_size:
            raise ValueError(f"spatial_size={spatial_size} must divide feature_grid={feature_grid}.")
        self.num_frames, self.spatial_size = num_frames, spatial_size
        self.feature_grid, self.feature_dim = feature_grid, feature_dim

    def init_state(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> FrameState:
        """Empty preallocated state (defaults: CPU, float32, or the wrapped memory's weights' device/dtype)."""
        device, dtype = self._defaults(device, dtype)
        return FrameState(
            frames=torch.zeros(self.num_frames, self.spatial_size**2, self.feature_dim, dtype=dtype, device=device),
            frame_ids=torch.zeros(self.num_frames, dtype=torch.long, device=device),
            frame_times=torch.zeros(self.num_frames, dtype=torch.float32, device=device),
        )

    def _defaults(self, device, dtype) -> tuple[torch.device, torch.dtype]:
        return torch.device("cpu" if device is None else device), torch.float32 if dtype is None else dtype

    def _pool(self, features: torch.Tensor, where: str, pooled_ok: bool = False) -> torch.Tensor:
        """Check ``(t, p*p, d)`` features (or already pooled ones where allowed) and pool them to ``S x S``."""
        full, pooled = (self.feature_grid**2, self.feature_dim), (self.spatial_size**2, self.feature_dim)
        shapes = {full, pooled} if pooled_ok else {full}
        if features.dim() != 3 or tuple(features.shape[1:]) not in shapes or not features.is_floating_point():
            raise ValueError(
                f"{type(self).__name__}.{where}: features must be float (frames, {full[0]}, {full[1]}) = "
                f"(frames, feature_grid**2, feature_dim); got {tuple(features.shape)} {features.dtype}."
            )
        if where == "compress" and features.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}.compress: features has 0 frames; pass at least one frame.")
        if features.shape[1] == pooled[0] and pooled_ok:
            return features
        return pool_grid(features, self.spatial_size, name="spatial_size")  # (t, S*S, d)

    def _push_window(self, state: FrameState, new: torch.Tensor, ids: torch.Tensor, times: torch.Tensor) -> None:
        """Append frames and keep the newest ``N`` (the FIFO rule of the window baselines)."""
        window = torch.cat([state.frames[:state.count], new.to(state.frames.dtype)])
        window_ids = torch.cat([state.frame_ids[:state.count], ids])
        window_times = torch.cat([state.frame_times[:state.count], times])
        keep = min(self.num_frames, window.shape[0])
        state.frames[:keep] = window[-keep:]
        state.frame_ids[:keep] = window_ids[-keep:]
        state.frame_times[:keep] = window_times[-keep:]
        state.count = keep

    @torch.no_grad()
    def update(self, state: FrameState, features: torch.Tensor, times: torch.Tensor | None = None) -> FrameState:
        """Push ``(n, p*p, d)`` new frames; the window keeps the newest ``N``. Returns ``state`` itself.

        The spatial and FIFO memories' update; the uniform memory keeps its own frames instead.
        """
        new = self._pool(features, "update")
        n = new.shape[0]
        if n == 0:
            return state
        device = state.frames.device
        ids = torch.arange(state.frames_seen, state.frames_seen + n, device=device)
        self._push_window(state, new.to(device), ids, frame_times(times, n, state.frames_seen, device))
        state.frames_seen += n
        return state

    def random_features(self, num_frames: int, *, grid_hw: tuple[int, int] | None = None,
                        generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
        """``(num_frames, feature_grid**2, feature_dim)`` standard-normal features, drawn on the CPU."""
        self._check_grid(grid_hw)
        shape = (num_frames, self.feature_grid**2, self.feature_dim)
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    def _check_grid(self, grid_hw) -> None:
        if grid_hw is not None and tuple(grid_hw) != (self.feature_grid, self.feature_grid):
            raise ValueError(f"grid_hw={tuple(grid_hw)} differs from {type(self).__name__}'s fixed feature grid "
                             f"({self.feature_grid}, {self.feature_grid}); pass grid_hw=None.")


class SpatialOnlyMemory(_KeptFrames):
    """STAR's spatial memory alone: the newest ``N`` frames pooled to the spatial grid, ``N * S * S`` tokens.

    Args:
        num_frames: N, frames kept (:meth:`for_budget` sizes it to a STAR memory's budget).
        spatial_size: S, the pooled grid side (STAR's ``spatial_size``).
        feature_grid: p, the input patch grid side.
        feature_dim: d, the input channels.

    Example:
        >>> memory = SpatialOnlyMemory(3, spatial_size=2, feature_grid=4, feature_dim=6)
        >>> memory.compress(torch.randn(10, 16, 6)).segments
        {'spatial': 12}
    """

    @classmethod
    def for_budget(cls, star: StarMemory, budget: int | None = None) -> SpatialOnlyMemory:
        """The most whole spatial frames of ``star``'s grid within ``budget`` (default :func:`star_budget`)."""
        cfg = star.config
        budget = star_budget(star) if budget is None else budget
        if budget < cfg.spatial_size**2:
            raise ValueError(f"budget={budget} tokens is less than one spatial frame ({cfg.spatial_size**2}).")
        return cls(budget // cfg.spatial_size**2, cfg.spatial_size, cfg.feature_grid, cfg.feature_dim)

    @classmethod
    def tiny(cls) -> SpatialOnlyMemory:
        """A CPU-sized instance for tests: 4x4 input grid, 6 channels, 3 frames of 2x2."""
        return cls(3, spatial_size=2, feature_grid=4, feature_dim=6)


    @torch.no_grad()
    def read(self, state: FrameState) -> MemoryOutput:
        if state.frames_seen == 0:
            raise ValueError("read(): the memory is empty; push at least one frame with update() first.")
        tokens = state.frames[:state.count].reshape(-1, self.feature_dim).clone()
        return MemoryOutput(tokens, {"spatial": tokens.shape[0]},
                            extras={"spatial_frames": state.frame_ids[:state.count].clone()})

    def compress(self, features: torch.Tensor, times: torch.Tensor | None = None) -> MemoryOutput:
        """The newest ``N`` frames of a clip, pooled (``features`` may be pooled already, as for STAR)."""
        pooled = self._pool(features, "compress", pooled_ok=True)[-self.num_frames:]
        ids = torch.arange(features.shape[0] - pooled.shape[0], features.shape[0], device=pooled.device)
        tokens = pooled.reshape(-1, self.feature_dim)
        return MemoryOutput(tokens, {"spatial": tokens.shape[0]}, extras={"spatial_frames": ids})

    def num_tokens(self, num_frames: int, grid_hw: tuple[int, int] | None = None) -> int:
        self._check_grid(grid_hw)
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames} must be >= 1.")
        return min(num_frames, self.num_frames) * self.spatial_size**2

    def exact_streaming_frames(self) -> int:
        """A window is exact for any length and chunking; its size is reported (callers build clips of it)."""
        return self.num_frames


class _OfflineOverFrames(_KeptFrames):
    """Frames chosen by a policy, kept pooled, then compressed by a STAR memory's offline path on ``read``.

    Args:
        star: the STAR memory whose ``compress`` turns the kept frames into tokens (the model's own: its
            semantic-attention weights are shared, not copied).
        num_frames: N, frames kept (default :func:`frames_at_budget`).
    """

    def __init__(self, star: StarMemory, num_frames: int | None = None):
        cfg = star.config
        num_frames = frames_at_budget(star) if num_frames is None else num_frames
        super().__init__(num_frames, cfg.spatial_size, cfg.feature_grid, cfg.feature_dim)
        self.star = star

    def _defaults(self, device, dtype) -> tuple[torch.device, torch.dtype]:
        weight = self.star.attention.q_proj.weight
        return (weight.device if device is None else torch.device(device)), (weight.dtype if dtype is None else dtype)

    def _offline(self, frames: torch.Tensor, ids: torch.Tensor, times: torch.Tensor) -> MemoryOutput:
        out = self.star.compress(frames, times)
        out.extras["kept_frames"] = ids
        if "retrieved_frames" in out.extras:  # positions among the kept frames -> stream indices
            out.extras["retrieved_frames"] = ids[out.extras["retrieved_frames"].to(ids.device)]
        return out

    @torch.no_grad()
    def read(self, state: FrameState) -> MemoryOutput:
        if state.frames_seen == 0 or state.count == 0:
            raise ValueError("read(): the memory is empty; push at least one frame with update() first.")
        rows = slice(0, state.count)
        return self._offline(state.frames[rows], state.frame_ids[rows].clone(), state.frame_times[rows])

    def num_tokens(self, num_frames: int, grid_hw: tuple[int, int] | None = None) -> int:
        self._check_grid(grid_hw)
        return self.star.num_tokens(self._kept(num_frames))

    def _kept(self, num_frames: int) -> int:
        raise NotImplementedError


class FifoFrameMemory(_OfflineOverFrames):
    """The newest ``N`` frames (a FIFO window) through the model's offline STAR memory.

    ``read`` after any chunking equals ``compress`` of the same frames, for any stream length.

    Example:
        >>> star = StarMemory.tiny()
        >>> FifoFrameMemory(star).compress(torch.randn(30, 16, 6)).segments
        {'abstract': 3, 'temporal': 4, 'retrieved': 8, 'spatial': 4}
    """


    def compress(self, features: torch.Tensor, times: torch.Tensor | None = None) -> MemoryOutput:
        """The offline memory of the clip's newest ``N`` frames."""
        pooled = self._pool(features, "compress", pooled_ok=True)
        t = pooled.shape[0]
        times = frame_times(times, t, 0, pooled.device)
        keep = slice(max(t - self.num_frames, 0), t)
        return self._offline(pooled[keep], torch.arange(t, device=pooled.device)[keep], times[keep])

    def _kept(self, num_frames: int) -> int:
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames} must be >= 1.")
        return min(num_frames, self.num_frames)

    def exact_streaming_frames(self) -> int:
        """A window is exact for any length and chunking; its size is reported (callers build clips of it)."""
        return self.num_frames


class UniformFrameMemory(_OfflineOverFrames):
    """``N`` frames evenly spaced over a stream of known length, through the model's offline STAR memory.

    The picks are :func:`~flash_vstream.video.sampling.uniform_indices` ``(stream_length, N)`` (first and last
    frame included, rounded evenly spaced; repeated when the stream is shorter than ``N``), so the memory must be
    told the stream's length up front, as an offline sampler knows a file's; ``read`` after the whole stream
    (any chunking) equals ``compress`` of it. A read before the end holds the picks seen so far.

    Args:
        star: the STAR memory whose ``compress`` turns the picked frames into tokens.
        stream_length: frames the stream will have (pushing more is an error).
        num_frames: N, frames picked (default :func:`frames_at_budget`).

    Example:
        >>> UniformFrameMemory(StarMemory.tiny(), stream_length=100).picks.tolist()
        [0, 25, 50, 74, 99]
    """

    def __init__(self, star: StarMemory, stream_length: int, num_frames: int | None = None):
        super().__init__(star, num_frames)
        require_int("stream_length", stream_length, minimum=1)
        self.stream_length = stream_length
        self.picks = torch.from_numpy(uniform_indices(stream_length, self.num_frames))  # (N,) non-decreasing

    @torch.no_grad()
    def update(self, state: FrameState, features: torch.Tensor, times: torch.Tensor | None = None) -> FrameState:
        """Push ``(n, p*p, d)`` new frames, keeping those at the picked indices. Returns ``state`` itself.

        Raises:
            ValueError: when the stream grows past ``stream_length``.
        """
        self._pool(features[:0], "update")  # shape check without pooling frames that are not kept
        n = features.shape[0]
        if n == 0:
            return state
        start = state.frames_seen
        if start + n > self.stream_length:
            raise ValueError(f"UniformFrameMemory was built for a {self.stream_length}-frame stream; pushing frame "
                             f"{start + n - 1} goes past it. Build it with the stream's real length.")
        device = state.frames.device
        times = frame_times(times, n, start, device)
        slots = torch.nonzero((self.picks >= start) & (self.picks < start + n)).flatten()  # (k,) picks in chunk
        if slots.numel():
            rows = (self.picks[slots] - start).to(features.device)
            state.frames[slots.to(device)] = self._pool(features[rows], "update").to(device, state.frames.dtype)
            state.frame_ids[slots.to(device)] = self.picks[slots].to(device)
            state.frame_times[slots.to(device)] = times[rows.to(device)]
            state.count = int(slots.max()) + 1
        state.frames_seen = start + n
        return state

    def compress(self, features: torch.Tensor, times: torch.Tensor | None = None) -> MemoryOutput:
        """The offline memory of ``N`` frames evenly spaced over the clip (its own length)."""
        pooled = self._pool(features, "compress", pooled_ok=True)
        t = pooled.shape[0]
        times = frame_times(times, t, 0, pooled.device)
        picks = torch.from_numpy(uniform_indices(t, self.num_frames)).to(pooled.device)
        return self._offline(pooled[picks], picks, times[picks])

    def _kept(self, num_frames: int) -> int:
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames} must be >= 1.")
        return self.num_frames

    def exact_streaming_frames(self) -> int:
        """0: a stream of any other length than ``stream_length`` reads unlike ``compress`` of its frames."""
        return 0


def budget_memory(name: str, star: StarMemory, *, stream_length: int | None = None) -> VideoMemory:
    """The memory ``name`` at ``star``'s visual-token budget: ``"star"`` (``star`` itself) or a baseline.

    Args:
        name: ``"star"`` or one of :data:`BASELINE_MEMORIES`.
        star: the model's STAR memory.
        stream_length: frames of the coming stream (``"uniform"`` needs it).

    Raises:
        ValueError: for an unknown name, or ``"uniform"`` without ``stream_length``.
    """
    if name == "star":
        return star
    if name == "spatial":
        return SpatialOnlyMemory.for_budget(star)
    if name == "fifo":
        return FifoFrameMemory(star)
    if name == "uniform":
        if stream_length is None:
            raise ValueError("the uniform memory needs the stream's length up front (stream_length=...).")
        return UniformFrameMemory(star, stream_length)
    raise ValueError(f"unknown memory {name!r}; choose 'star' or one of {BASELINE_MEMORIES}.")
