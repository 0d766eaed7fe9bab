"""Flash Memory (Flash-VStream, ICCV 2025): Context Synopsis Memory + Detail Augmentation Memory.

Parameter-free; it sits between the Qwen2-VL ViT and its patch merger. Its input is, per temporal patch (two
frames), the pre-merger ViT tokens at full resolution (``high``) and at half resolution (``low``):

- **CSM**: time-ordered weighted k-means over the flattened ``low`` tokens of all temporal patches, to
  ``N_CSM`` centroids carrying their mass ("information density") and weighted-mean timestamp (the shared
  :mod:`flash_vstream.memory.kmeans`). Clips of at most ``N_CSM`` temporal patches pass through unchanged.
- **DAM**: for the ``N_DAM`` heaviest clusters, the ``high`` tokens of the temporal patch whose ``low``
  tokens are nearest to the centroid (L2, no de-duplication, order = mass rank, as published). Clips of at
  most ``N_DAM`` temporal patches pass through unchanged, in time order.
- Output order ``[DAM; CSM]``; the model's patch merger then turns every ``merge**2`` tokens into one LLM token,
  which is what :meth:`FlashMemory.num_tokens` counts.

``FlashMemoryConfig.fidelity`` chooses between the paper's method (default) and the published code where they
differ (``docs/memory.md`` lists the differences). Streaming (``update``/``read``) folds new temporal patches
into the centroids with their carried masses and timestamps and keeps a *bounded* feature bank for DAM
retrieval (optionally on the CPU). From an empty state, one ``update`` with a whole clip followed by ``read``
gives exactly ``compress`` of that clip.

Times are in temporal-patch units (frame index / 2). Shapes: t: temporal patches, n_hi / n_lo: tokens per
patch at full / half resolution, d: ViT width, k: CSM clusters, r: DAM entries, b: bank entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flash_vstream.memory.base import MemoryOutput, MemoryState, VideoMemory, frame_times
from flash_vstream.memory.flash_config import (
    FIDELITY_MODES,
    PUBLISHED_KEYS,
    SPATIAL_METHODS,
    TEMPORAL_METHODS,
    FlashMemoryConfig,
)
from flash_vstream.memory.kmeans import count_distinct_rows, squared_distances, weighted_kmeans
from flash_vstream.vision.features import DualResFeatures

__all__ = [
    "FIDELITY_MODES",
    "PUBLISHED_KEYS",
    "SPATIAL_METHODS",
    "TEMPORAL_METHODS",
    "DualResFeatures",
    "FlashMemory",
    "FlashMemoryConfig",
    "FlashMemoryState",
]


@dataclass
class FlashMemoryState(MemoryState):
    """Streaming state: CSM centroids plus the bounded DAM feature bank. ``update`` rewrites its fields in place.

    Attributes:
        centroids: ``(k', n_lo, d)`` CSM centroids in time order (``k' <= N_CSM``), or ``None`` before the
            first update.
        weights: ``(k',)`` float32 cluster masses.
        times: ``(k',)`` float32 weighted-mean timestamps.
        bank_low: ``(b, n_lo, d)`` half-resolution bank (retrieval keys, on the state's device), or ``None``.
        bank_high: ``b`` full-resolution entries ``(n_hi, d)`` (on ``bank_device``). A tuple of per-patch
            tensors, so an update appends references instead of copying the whole bank.
        bank_times: ``(b,)`` float32 timestamps of the bank entries, increasing.
        grid_hw: full-resolution patch grid of the stream, fixed by the first update.
        pool_size: down-sampling factor of the stream.
        num_seen: temporal patches folded in so far (default timestamps continue from here).
        temporal_patch_size: frames per temporal patch, to count ``frames_seen``.
        device: where centroids and retrieval keys live (``None``: the first update's features' device).
        dtype: dtype the features are stored in (``None``: the first update's features' dtype).
    """

    centroids: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    times: torch.Tensor | None = None
    bank_low: torch.Tensor | None = None
    bank_high: tuple[torch.Tensor, ...] = ()
    bank_times: torch.Tensor | None = None
    grid_hw: tuple[int, int] | None = None
    pool_size: int = 2
    num_seen: int = 0
    temporal_patch_size: int = 2
    device: torch.device | None = field(default=None, repr=False)
    dtype: torch.dtype | None = None

    @property
    def frames_seen(self) -> int:
        """Frames folded in (temporal patches x frames per patch; a padded odd frame counts)."""
        return self.num_seen * self.temporal_patch_size

    def device_tensors(self) -> list[torch.Tensor]:
        """The CSM: centroids, masses and timestamps (at most N_CSM rows)."""
        return [t for t in (self.centroids, self.weights, self.times) if t is not None]

    def bank_tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.bank_low, self.bank_times) if t is not None] + list(self.bank_high)

    @property
    def bank_entries(self) -> int:
        return len(self.bank_high)

    def to(self, device: torch.device | str) -> FlashMemoryState:
        """Move every tensor (bank included) to ``device``; later updates keep the centroids there."""
        super().to(device)
        self.device = torch.device(device)
        return self


@dataclass
class _Clusters:
    """CSM centroids ``(k, n_lo, d)`` with masses ``(k,)`` and timestamps ``(k,)``."""

    centroids: torch.Tensor
    weights: torch.Tensor
    times: torch.Tensor


class FlashMemory(VideoMemory[FlashMemoryState]):
    """Context Synopsis Memory + Detail Augmentation Memory over dual-resolution ViT tokens.

    Args:
        config: memory settings.
        spatial_merge_size: the patch merger's window side (``vision_config.spatial_merge_size``); the decoder
            sees one token per ``spatial_merge_size**2`` memory tokens.
        feature_dim: width ``d`` of the ViT tokens (Qwen2-VL's vision ``embed_dim``, 1280); only
            :meth:`random_features` uses it.

    >>> mem = FlashMemory(FlashMemoryConfig())
    >>> mem.num_tokens(240, grid_hw=(32, 32)), mem.num_tokens(240, grid_hw=(24, 40))
    (11520, 10800)
    """

    def __init__(self, config: FlashMemoryConfig | None = None, spatial_merge_size: int = 2,
                 feature_dim: int = 1280):
        super().__init__()
        self.config = config or FlashMemoryConfig()
        self.spatial_merge_size = spatial_merge_size
        self.feature_dim = feature_dim

    @classmethod
    def tiny(cls, **overrides) -> FlashMemory:
        """A CPU-sized memory for tests: N_CSM 6, N_DAM 3, bank of 12, width 8 (``overrides``: config fields)."""
        values = dict(temporal_length=12, spatial_length=6, bank_size=12)
        values.update(overrides)
        return cls(FlashMemoryConfig(**values), feature_dim=8)

    # ------------------------------------------------------------------ offline
    def compress(self, features: DualResFeatures, times: torch.Tensor | None = None) -> MemoryOutput:
        """Compress a whole clip: CSM over all ``low`` tokens, DAM retrieved from the clip itself.

        Returns:
            ``[DAM; CSM]`` tokens in the dtype of ``features``; ``positions`` and ``extras`` as in :meth:`read`.
        """
        t = features.num_patches
        if t == 0:
            raise ValueError("FlashMemory.compress: features has 0 temporal patches; pass at least one.")
        times = frame_times(times, t, 0, features.low.device, unit="temporal patch")
        csm = self._cluster(features.low, torch.ones(t, device=features.low.device), times)
        dam_idx = self._select_dam(csm, features.low, times)
        return self._output(features.high[dam_idx], times[dam_idx], csm, features.grid_hw, features.pool_size)

    # ------------------------------------------------------------------ counting
    def num_tokens(self, num_frames: int, grid_hw: tuple[int, int] | None = None) -> int:
        """LLM tokens (after the patch merger) for ``num_frames`` frames on a ``grid_hw`` patch grid.

        Args:
            num_frames: frames of the clip (an odd count is padded to the next temporal patch).
            grid_hw: full-resolution patch grid ``(h, w)`` of a frame (pixels / 14); required.

        Raises:
            ValueError: without ``grid_hw``, on a grid the half-resolution merge windows do not tile, or on
                ``num_frames < 1``.
        """
        h, w = self._check_grid(grid_hw, "num_tokens")
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames} must be >= 1.")
        t = -(-num_frames // self.config.temporal_patch_size)
        pool, merge = self.config.temporal_poolsize, self.spatial_merge_size
        n_hi, n_lo = h * w, (h // pool) * (w // pool)
        return (min(t, self.config.dam_size) * n_hi + min(t, self.config.csm_size) * n_lo) // merge**2

    def decoder_tokens(self, output: MemoryOutput) -> int:
        """LLM tokens for ``output``: one per ``spatial_merge_size**2`` memory tokens."""
        return output.num_tokens // self.spatial_merge_size**2

    def random_features(self, num_frames: int, *, grid_hw: tuple[int, int] | None = None,
                        generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> DualResFeatures:
        """Standard-normal :class:`DualResFeatures` of ``ceil(num_frames / 2)`` temporal patches (drawn on CPU)."""
        h, w = self._check_grid(grid_hw, "random_features")
        pool = self.config.temporal_poolsize
        t = -(-num_frames // self.config.temporal_patch_size)
        high = torch.randn((t, h * w, self.feature_dim), generator=generator)
        low = torch.randn((t, (h // pool) * (w // pool), self.feature_dim), generator=generator)
        return DualResFeatures(high, low, (h, w), pool).to(device=device, dtype=dtype)

    def exact_streaming_frames(self) -> int:
        """Streaming equals ``compress`` while the clip fits the CSM (identity k-means, nothing evicted)."""
        return self.config.csm_size * self.config.temporal_patch_size

    @property
    def bank_capacity(self) -> int:
        return self.config.bank_size

    # ------------------------------------------------------------------ streaming
    def init_state(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> FlashMemoryState:
        """An empty state; ``device``/``dtype`` default to those of the first update's features."""
        return FlashMemoryState(
            pool_size=self.config.temporal_poolsize,
            temporal_patch_size=self.config.temporal_patch_size,
            device=torch.device(device) if device is not None else None,
            dtype=dtype,
        )

    def update(
        self, state: FlashMemoryState, features: DualResFeatures, times: torch.Tensor | None = None
    ) -> FlashMemoryState:
        """Fold new temporal patches into the centroids (masses and timestamps carried) and the bank, in place.

        Args:
            state: from :meth:`init_state` or a previous ``update``; written in place.
            features: the new temporal patches (cast to the state's dtype).
            times: ``(t,)`` timestamps in temporal-patch units (default: continuing from ``num_seen``).

        Returns:
            ``state`` itself.

        Raises:
            ValueError: when the frame size (patch grid) or the pooling changes within a stream.
        """
        self._check_stream(state, features)
        t = features.num_patches
        if t == 0:
            return state
        device = state.device or features.low.device
        dtype = state.dtype or features.low.dtype
        times = frame_times(times, t, state.num_seen, device, unit="temporal patch")
        low = features.low.to(device=device, dtype=dtype)
        high = features.high.to(device=self.config.bank_device or device, dtype=dtype)
        ones = torch.ones(t, device=device)
        bank_high = state.bank_high + tuple(high.unbind(0))
        if state.centroids is None:
            rows, weights, row_times, bank_low, bank_times = low, ones, times, low, times
        else:
            rows = torch.cat([state.centroids, low])
            weights = torch.cat([state.weights, ones])
            row_times = torch.cat([state.times, times])
            bank_low = torch.cat([state.bank_low, low])
            bank_times = torch.cat([state.bank_times, times])
        csm = self._cluster(rows, weights, row_times)
        state.bank_low, state.bank_high, state.bank_times = self._evict(csm, bank_low, bank_high, bank_times)
        state.centroids, state.weights, state.times = csm.centroids, csm.weights, csm.times
        state.grid_hw, state.pool_size = tuple(features.grid_hw), features.pool_size
        state.num_seen += t
        state.device, state.dtype = device, dtype
        return state

    def read(self, state: FlashMemoryState) -> MemoryOutput:
        """Read the memory without changing ``state``: DAM from the bank for the heaviest centroids, then CSM.

        Returns:
            ``[DAM; CSM]`` tokens in the state's dtype on its device; ``positions`` the per-token temporal index;
            ``extras``: ``dam_times``, ``csm_times`` (rounded), ``csm_weights``, ``csm_timestamps``,
            ``dam_grid_hw``, ``csm_grid_hw``.

        Raises:
            ValueError: on a state that has seen no frame.
        """
        if state.centroids is None:
            raise ValueError(
                "Flash Memory state is empty; call update() with at least one temporal patch first"
            )
        csm = _Clusters(state.centroids, state.weights, state.times)
        dam_idx = self._select_dam(csm, state.bank_low, state.bank_times)
        device = state.centroids.device
        high = torch.stack([state.bank_high[i].to(device) for i in dam_idx.tolist()])
        return self._output(high, state.bank_times[dam_idx], csm, state.grid_hw, state.pool_size)

    # ------------------------------------------------------------------ steps
    def _cluster(self, rows: torch.Tensor, weights: torch.Tensor, times: torch.Tensor) -> _Clusters:
        """CSM: time-ordered weighted k-means of ``(n, n_lo, d)`` rows to at most N_CSM centroids."""
        cfg = self.config
        flat = rows.flatten(1)  # (n, n_lo*d)
        if (cfg.fidelity == "reference" and rows.shape[0] > cfg.csm_size
                and count_distinct_rows(flat) < cfg.csm_size):
            return _published_few_distinct(rows, weights, times, cfg.csm_size)
        result = weighted_kmeans(
            flat, cfg.csm_size, weights, times,
            iters=cfg.kmeans_iters, tol=cfg.kmeans_tol, seed=cfg.kmeans_seed, order_by_time=True,
        )
        return _Clusters(result.centroids.view(-1, *rows.shape[1:]), result.weights, result.times)

    def _select_dam(self, csm: _Clusters, bank_low: torch.Tensor, bank_times: torch.Tensor) -> torch.Tensor:
        """DAM: bank indices, one per heavy cluster (or the whole bank in time order when it is small)."""
        cfg = self.config
        n_dam = cfg.dam_size
        if bank_low.shape[0] <= n_dam:
            return torch.arange(bank_low.shape[0], device=bank_low.device)
        if cfg.fidelity == "reference":
            heavy = torch.argsort(csm.weights, descending=True)[:n_dam]  # the published call: not stable
        else:  # equal masses (e.g. pass-through clusters) keep time order, on every device
            heavy = torch.sort(csm.weights, descending=True, stable=True).indices[:n_dam]  # (r,)
        if cfg.spatial_method == "nearest":
            targets = csm.times[heavy].round()  # (r,)
            return (bank_times[None, :] - targets[:, None]).abs().argmin(dim=1)
        keys = csm.centroids[heavy].flatten(1).float()  # (r, n_lo*d)
        bank = bank_low.flatten(1).float()  # (b, n_lo*d)
        if cfg.spatial_method == "klarge_retrieve_cos":
            similarity = torch.nn.functional.normalize(keys, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
            # The published code takes argmin of the SIMILARITY (the least similar patch); the paper means argmax.
            return similarity.argmin(dim=1) if cfg.fidelity == "reference" else similarity.argmax(dim=1)
        return squared_distances(keys, bank).argmin(dim=1)  # (r,) first minimum on ties

    def _evict(
        self, csm: _Clusters, bank_low: torch.Tensor, bank_high: tuple, bank_times: torch.Tensor
    ) -> tuple[torch.Tensor, tuple, torch.Tensor]:
        """Bound the bank: keep each centroid's nearest entry, then the newest entries, in time order."""
        size = bank_low.shape[0]
        if size <= self.config.bank_size:
            return bank_low, bank_high, bank_times
        nearest = squared_distances(csm.centroids.flatten(1).float(), bank_low.flatten(1).float()).argmin(
            dim=1
        )
        keep = torch.zeros(size, dtype=torch.bool, device=bank_low.device)
        keep[nearest] = True
        free = self.config.bank_size - int(keep.sum())
        newest = (~keep).nonzero().squeeze(1)[-free:] if free > 0 else nearest[:0]
        keep[newest] = True
        index = keep.nonzero().squeeze(1)  # increasing, so time order is kept
        return bank_low[index], tuple(bank_high[i] for i in index.tolist()), bank_times[index]

    def _output(
        self,
        dam_high: torch.Tensor,
        dam_times: torch.Tensor,
        csm: _Clusters,
        grid_hw: tuple[int, int],
        pool_size: int,
    ) -> MemoryOutput:
        """Tokens ``[DAM; CSM]`` flattened to ``(N, d)`` with per-token temporal indices and layout extras."""
        n_hi, n_lo = dam_high.shape[1], csm.centroids.shape[1]
        dam_t = dam_times.round().long()
        csm_t = csm.times.round().long()
        tokens = torch.cat([dam_high.flatten(0, 1), csm.centroids.to(dam_high.dtype).flatten(0, 1)])
        positions = torch.cat([dam_t.repeat_interleave(n_hi), csm_t.repeat_interleave(n_lo)])
        return MemoryOutput(
            tokens=tokens,
            segments={"dam": dam_high.shape[0] * n_hi, "csm": csm.centroids.shape[0] * n_lo},
            positions=positions,
            extras={
                "dam_times": dam_t,
                "csm_times": csm_t,
                "csm_weights": csm.weights,
                "csm_timestamps": csm.times,
                "dam_grid_hw": tuple(grid_hw),
                "csm_grid_hw": (grid_hw[0] // pool_size, grid_hw[1] // pool_size),
            },
        )

    # ------------------------------------------------------------------ checks
    def _check_grid(self, grid_hw: tuple[int, int] | None, where: str) -> tuple[int, int]:
        window = self.config.temporal_poolsize * self.spatial_merge_size
        if grid_hw is None:
            raise ValueError(f"FlashMemory.{where} needs grid_hw=(h, w), the full-resolution patch grid of a frame "
                             "(pixels / 14); Flash Memory's token count depends on the frame size.")
        h, w = (int(v) for v in grid_hw)
        if h < 1 or w < 1 or h % window or w % window:
            raise ValueError(f"FlashMemory.{where}: grid_hw={tuple(grid_hw)} must be positive multiples of "
                             f"temporal_poolsize * spatial_merge_size = {window} (resize frames to multiples of "
                             f"{14 * window} px).")
        return h, w

    @staticmethod
    def _check_stream(state: FlashMemoryState, features: DualResFeatures) -> None:
        if state.grid_hw is not None and tuple(features.grid_hw) != tuple(state.grid_hw):
            raise ValueError(
                f"stream frame grid changed from {state.grid_hw} to {features.grid_hw}; resize every "
                f"frame of a stream to the same size (FlashFrameProcessor.frame_size of the first frame)"
            )
        if state.grid_hw is not None and features.pool_size != state.pool_size:
            raise ValueError(
                f"stream pool_size changed from {state.pool_size} to {features.pool_size}; encode every "
                f"update with the same pool size (FlashMemoryConfig.temporal_poolsize)"
            )


def _published_few_distinct(
    rows: torch.Tensor, weights: torch.Tensor, times: torch.Tensor, k: int
) -> _Clusters:
    """The published CSM when ``n > k`` rows hold fewer than ``k`` distinct values (``fidelity="reference"``).

    The distinct rows (``torch.unique``: lexicographic order) become centroids with mass 1 each and the mean
    time of their members (weighted by the row weights; offline all weights are 1), sorted by that time with
    ``torch.argsort`` (not stable, as published). The first ``k - distinct`` input rows are then PREPENDED with
    mass 1 and their own times, so the result has ``k`` centroids that are not in time order.
    """
    flat = rows.flatten(1).float()  # (n, n_lo*d)
    distinct, members = torch.unique(flat, dim=0, return_inverse=True)  # (u, n_lo*d), (n,)
    u = distinct.shape[0]
    onehot = torch.nn.functional.one_hot(members, u).float()  # (n, u)
    mass = weights.float() @ onehot  # (u,)
    mean_times = torch.where(
        mass > 0, (weights.float() * times) @ onehot / mass.clamp_min(1e-30), times @ onehot / onehot.sum(0)
    )
    order = torch.argsort(mean_times)
    pad = k - u
    centroids = torch.cat([flat[:pad], distinct[order]]).to(rows.dtype).view(k, *rows.shape[1:])
    return _Clusters(centroids, torch.ones(k, device=rows.device), torch.cat([times[:pad], mean_times[order]]))
