"""Flash Memory (Flash-VStream, ICCV 2025): Context Synopsis Memory + Detail Augmentation Memory.

Parameter-free; it sits between the Qwen2-VL ViT and its patch merger (reference ``flash-vstream.md``
§7.4-§7.7, Appendix A.3/A.4). Its input is, per temporal patch (two frames), the pre-merger ViT tokens at
full resolution (``high``) and at half resolution (``low``):

- **CSM**: time-ordered weighted k-means over the flattened ``low`` tokens of all temporal patches, to
  ``N_CSM`` centroids carrying their mass ("information density") and weighted-mean timestamp (the shared
  :mod:`flash_vstream.memory.kmeans`). Clips of at most ``N_CSM`` temporal patches pass through unchanged.
- **DAM**: for the ``N_DAM`` heaviest clusters, the ``high`` tokens of the temporal patch whose ``low``
  tokens are nearest to the centroid (L2, no de-duplication, order = mass rank, as published). Clips of at
  most ``N_DAM`` temporal patches pass through unchanged, in time order.
- Output order ``[DAM; CSM]``; the model's patch merger then turns every 4 tokens into one LLM token.

Streaming (``update``/``read``) folds new temporal patches into the centroids with their carried masses
and timestamps and keeps a *bounded* feature bank for DAM retrieval (optionally on the CPU). From an empty
state, one ``update`` with a whole clip followed by ``read`` gives exactly ``compress`` of that clip.

Times are in temporal-patch units (frame index / 2). Shapes: t: temporal patches, n_hi / n_lo: tokens per
patch at full / half resolution, d: ViT width, k: CSM clusters, r: DAM entries, b: bank entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from flash_vstream.memory.base import MemoryOutput, VideoMemory
from flash_vstream.memory.kmeans import squared_distances, weighted_kmeans
from flash_vstream.vision.features import DualResFeatures

TEMPORAL_METHODS = ("kmeans_ordered",)
SPATIAL_METHODS = ("klarge_retrieve", "klarge_retrieve_cos", "nearest")

# Published ``vision_config.flash_memory_config`` keys -> FlashMemoryConfig fields.
PUBLISHED_KEYS = {
    "flash_memory_temporal_length": "temporal_length",
    "flash_memory_temporal_method": "temporal_method",
    "flash_memory_temporal_poolsize": "temporal_poolsize",
    "flash_memory_temporal_pca_dim": "temporal_pca_dim",
    "flash_memory_spatial_length": "spatial_length",
    "flash_memory_spatial_method": "spatial_method",
}


@dataclass
class FlashMemoryConfig:
    """Flash Memory settings; the first six mirror the published ``flash_memory_config`` (defaults included).

    The published lengths count FRAMES; the memory works on temporal patches of ``temporal_patch_size``
    frames, so ``N_CSM = temporal_length / 2 = 60`` and ``N_DAM = spatial_length / 2 = 30``.
    """

    temporal_length: int = 120
    """CSM size in frames (``flash_memory_temporal_length``); N_CSM = temporal_length / temporal_patch_size."""

    temporal_method: str = "kmeans_ordered"
    """CSM compressor (``flash_memory_temporal_method``); only the published default is implemented."""

    temporal_poolsize: int = 2
    """Pixel down-sampling of the CSM pathway (``flash_memory_temporal_poolsize``)."""

    temporal_pca_dim: int = 32
    """Kept so published configs round-trip (``flash_memory_temporal_pca_dim``); no method here uses it."""

    spatial_length: int = 60
    """DAM size in frames (``flash_memory_spatial_length``); N_DAM = spatial_length / temporal_patch_size."""

    spatial_method: str = "klarge_retrieve"
    """DAM selection (``flash_memory_spatial_method``): "klarge_retrieve" (L2 nearest patch of each heavy
    centroid, published default), "klarge_retrieve_cos" (cosine), or "nearest" (the patch at each heavy
    centroid's rounded timestamp, the paper's "temporal-centric" ablation)."""

    temporal_patch_size: int = 2
    """Frames per temporal patch (``vision_config.temporal_patch_size``), to convert the frame lengths."""

    kmeans_iters: int = 10
    """Lloyd iterations of the CSM k-means (published 10)."""

    kmeans_tol: float = 1e-4
    """Early-stop tolerance of the CSM k-means (published 1e-4)."""

    kmeans_seed: int = 0
    """Seed of the k-means initial draw (the published code is unseeded)."""

    bank_size: int = 480
    """Streaming only: most temporal patches kept in the DAM feature bank (480 = 16 min at 1 fps). Over the
    cap, the bank keeps each centroid's nearest entry and then the newest ones. Offline ``compress`` uses the
    whole clip. Must be >= N_CSM."""

    bank_device: str | None = None
    """Streaming only: device of the full-resolution bank (e.g. "cpu" to offload it); ``None`` keeps it with
    the incoming features. The half-resolution bank used for retrieval stays with the features."""

    def __post_init__(self) -> None:
        for name in ("temporal_length", "spatial_length", "temporal_patch_size", "temporal_poolsize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FlashMemoryConfig.{name} must be a positive integer, got {value!r}")
        for name in ("temporal_length", "spatial_length"):
            if getattr(self, name) % self.temporal_patch_size:
                raise ValueError(
                    f"FlashMemoryConfig.{name}={getattr(self, name)} counts frames and must be a multiple of "
                    f"temporal_patch_size={self.temporal_patch_size}"
                )
        if self.temporal_method not in TEMPORAL_METHODS:
            raise ValueError(
                f"FlashMemoryConfig.temporal_method={self.temporal_method!r} is not implemented; use one of "
                f"{TEMPORAL_METHODS}"
            )
        if self.spatial_method not in SPATIAL_METHODS:
            raise ValueError(
                f"FlashMemoryConfig.spatial_method={self.spatial_method!r} is not implemented; use one of "
                f"{SPATIAL_METHODS}"
            )
        if self.kmeans_iters < 1:
            raise ValueError(f"FlashMemoryConfig.kmeans_iters must be >= 1, got {self.kmeans_iters}")
        if self.kmeans_tol < 0:
            raise ValueError(f"FlashMemoryConfig.kmeans_tol must be >= 0, got {self.kmeans_tol}")
        if self.bank_size < self.csm_size:
            raise ValueError(
                f"FlashMemoryConfig.bank_size={self.bank_size} must be >= N_CSM={self.csm_size} so every "
                f"centroid keeps its nearest bank entry"
            )

    @property
    def csm_size(self) -> int:
        """N_CSM: CSM centroids, in temporal patches."""
        return self.temporal_length // self.temporal_patch_size

    @property
    def dam_size(self) -> int:
        """N_DAM: DAM entries, in temporal patches."""
        return self.spatial_length // self.temporal_patch_size

    @classmethod
    def from_published(cls, published: dict | None, **extra) -> FlashMemoryConfig:
        """Build from a published ``flash_memory_config`` dict (missing keys take the published defaults).

        Raises:
            ValueError: on a key that is not one of the six published ones, naming it.
        """
        published = dict(published or {})
        unknown = sorted(set(published) - set(PUBLISHED_KEYS))
        if unknown:
            raise ValueError(
                f"vision_config.flash_memory_config has unknown keys {unknown}; expected a subset of "
                f"{sorted(PUBLISHED_KEYS)}"
            )
        return cls(**{PUBLISHED_KEYS[k]: v for k, v in published.items()}, **extra)

    def to_published(self) -> dict:
        """The six published keys, for ``vision_config.flash_memory_config``."""
        return {key: getattr(self, name) for key, name in PUBLISHED_KEYS.items()}

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class FlashMemoryState:
    """Streaming state: CSM centroids plus the bounded DAM feature bank.

    Attributes:
        centroids: ``(k', n_lo, d)`` CSM centroids in time order, or ``None`` before the first update.
        weights: ``(k',)`` float32 cluster masses.
        times: ``(k',)`` float32 weighted-mean timestamps.
        bank_low: ``(b, n_lo, d)`` half-resolution bank (retrieval keys), or ``None``.
        bank_high: ``b`` full-resolution entries ``(n_hi, d)`` (on ``bank_device``). A tuple of per-patch
            tensors, so an update appends references instead of copying the whole bank.
        bank_times: ``(b,)`` float32 timestamps of the bank entries, increasing.
        grid_hw: full-resolution patch grid of the stream, fixed by the first update.
        pool_size: down-sampling factor of the stream.
        num_seen: temporal patches folded in so far (default timestamps continue from here).
        device: where new centroids live.
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
    device: torch.device | None = field(default=None, repr=False)


class FlashMemory(VideoMemory):
    """Context Synopsis Memory + Detail Augmentation Memory over dual-resolution ViT tokens.

    Args:
        config: memory settings.
        spatial_merge_size: the patch merger's window side (``vision_config.spatial_merge_size``), only used
            to count LLM tokens in :meth:`num_tokens`.

    >>> mem = FlashMemory(FlashMemoryConfig())
    >>> mem.num_tokens(240, grid_hw=(32, 32)), mem.num_tokens(240, grid_hw=(24, 40))
    (11520, 10800)
    """

    def __init__(self, config: FlashMemoryConfig | None = None, spatial_merge_size: int = 2):
        super().__init__()
        self.config = config or FlashMemoryConfig()
        self.spatial_merge_size = spatial_merge_size

    # ------------------------------------------------------------------ offline
    def compress(self, features: DualResFeatures, times: torch.Tensor | None = None) -> MemoryOutput:
        """Compress a whole clip: CSM over all ``low`` tokens, DAM retrieved from the clip itself."""
        t = features.num_patches
        if times is None:
            times = torch.arange(t, dtype=torch.float32, device=features.low.device)
        csm = self._cluster(features.low, torch.ones(t, device=features.low.device), times.float())
        dam_idx = self._select_dam(csm, features.low, times.float())
        return self._output(
            features.high[dam_idx], times.float()[dam_idx], csm, features.grid_hw, features.pool_size
        )

    # ------------------------------------------------------------------ streaming
    def init_state(self, device: torch.device | str | None = None) -> FlashMemoryState:
        return FlashMemoryState(device=torch.device(device) if device is not None else None)

    def update(
        self, state: FlashMemoryState, features: DualResFeatures, times: torch.Tensor | None = None
    ) -> FlashMemoryState:
        """Fold new temporal patches into the centroids (masses and timestamps carried) and the bank.

        Raises:
            ValueError: when the frame size (patch grid) or the pooling changes within a stream.
        """
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
        device = state.device or features.low.device
        t = features.num_patches
        if times is None:
            times = state.num_seen + torch.arange(t, dtype=torch.float32)
        low, high, times = features.low.to(device), features.high, times.float().to(device)
        ones = torch.ones(t, device=device)
        if self.config.bank_device is not None:
            high = high.to(self.config.bank_device)
        bank_high = state.bank_high + tuple(high.unbind(0))
        if state.centroids is None:
            rows, weights, row_times = low, ones, times
            bank_low, bank_times = low, times
        else:
            rows = torch.cat([state.centroids, low])
            weights = torch.cat([state.weights, ones])
            row_times = torch.cat([state.times, times])
            bank_low = torch.cat([state.bank_low, low])
            bank_times = torch.cat([state.bank_times, times])
        csm = self._cluster(rows, weights, row_times)
        bank_low, bank_high, bank_times = self._evict(csm, bank_low, bank_high, bank_times)
        return replace(
            state,
            centroids=csm.centroids,
            weights=csm.weights,
            times=csm.times,
            bank_low=bank_low,
            bank_high=bank_high,
            bank_times=bank_times,
            grid_hw=tuple(features.grid_hw),
            pool_size=features.pool_size,
            num_seen=state.num_seen + t,
            device=device,
        )

    def read(self, state: FlashMemoryState) -> MemoryOutput:
        """Read the memory: DAM retrieved from the bank for the heaviest centroids, then the CSM centroids.

        Raises:
            ValueError: on a state that has seen no frame.
        """
        if state.centroids is None:
            raise ValueError(
                "Flash Memory state is empty; call update() with at least one temporal patch first"
            )
        csm = _Clusters(state.centroids, state.weights, state.times)
        dam_idx = self._select_dam(csm, state.bank_low, state.bank_times)
        high = torch.stack([state.bank_high[i] for i in dam_idx.tolist()]).to(state.centroids.device)
        return self._output(high, state.bank_times[dam_idx], csm, state.grid_hw, state.pool_size)

    # ------------------------------------------------------------------ counting
    def num_tokens(self, num_frames: int, *, grid_hw: tuple[int, int]) -> int:
        """LLM tokens (after the patch merger) for ``num_frames`` frames on a ``grid_hw`` patch grid.

        Args:
            num_frames: frames of the clip (an odd count is padded to the next temporal patch).
            grid_hw: full-resolution patch grid ``(h, w)`` of a frame (pixels / 14).
        """
        t = -(-num_frames // self.config.temporal_patch_size)
        h, w = grid_hw
        pool, merge = self.config.temporal_poolsize, self.spatial_merge_size
        n_hi, n_lo = h * w, (h // pool) * (w // pool)
        return (min(t, self.config.dam_size) * n_hi + min(t, self.config.csm_size) * n_lo) // merge**2

    # ------------------------------------------------------------------ steps
    def _cluster(self, rows: torch.Tensor, weights: torch.Tensor, times: torch.Tensor) -> _Clusters:
        """CSM: time-ordered weighted k-means of ``(n, n_lo, d)`` rows to at most N_CSM centroids."""
        cfg = self.config
        result = weighted_kmeans(
            rows.flatten(1),  # (n, n_lo*d)
            cfg.csm_size,
            weights,
            times,
            iters=cfg.kmeans_iters,
            tol=cfg.kmeans_tol,
            seed=cfg.kmeans_seed,
            order_by_time=True,
        )
        return _Clusters(result.centroids.view(-1, *rows.shape[1:]), result.weights, result.times)

    def _select_dam(self, csm: _Clusters, bank_low: torch.Tensor, bank_times: torch.Tensor) -> torch.Tensor:
        """DAM: bank indices, one per heavy cluster (or the whole bank in time order when it is small)."""
        n_dam = self.config.dam_size
        if bank_low.shape[0] <= n_dam:
            return torch.arange(bank_low.shape[0], device=bank_low.device)
        # Stable sort: equal masses (e.g. pass-through clusters) keep time order, so ties are deterministic.
        heavy = torch.sort(csm.weights, descending=True, stable=True).indices[:n_dam]  # (r,)
        if self.config.spatial_method == "nearest":
            targets = csm.times[heavy].round()  # (r,)
            return (bank_times[None, :] - targets[:, None]).abs().argmin(dim=1)
        keys = csm.centroids[heavy].flatten(1).float()  # (r, n_lo*d)
        bank = bank_low.flatten(1).float()  # (b, n_lo*d)
        if self.config.spatial_method == "klarge_retrieve_cos":
            keys = torch.nn.functional.normalize(keys, dim=1)
            bank = torch.nn.functional.normalize(bank, dim=1)
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


@dataclass
class _Clusters:
    """CSM centroids ``(k, n_lo, d)`` with masses ``(k,)`` and timestamps ``(k,)``."""

    centroids: torch.Tensor
    weights: torch.Tensor
    times: torch.Tensor
