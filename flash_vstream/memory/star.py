"""STAR memory of Flash-VStream (2024): spatial, temporal, abstract and retrieved memories over CLIP features.

Offline ``compress`` is the published algorithm (``docs/memory.md`` states it step by step); the streaming calls
(``init_state``/``update``/``read``) keep a fixed-size device state and agree with ``compress`` wherever the
algorithm allows (up to :meth:`StarMemory.exact_streaming_frames` frames, whatever the chunking).

Shapes: t: frames, h: history frames (those older than the spatial window), p: CLIP grid side (16),
S/t_/a: spatial/temporal/abstract pooled grid sides (8/4/1), d: feature dim (1024), k: temporal clusters.
Token order of every read: ``[abstract; temporal; retrieved; spatial]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from flash_vstream.memory.base import MemoryOutput, VideoMemory, frame_times, require_int
from flash_vstream.memory.kmeans import squared_distances, weighted_kmeans
from flash_vstream.memory.pooling import pool_grid
from flash_vstream.memory.star_state import FrameBank, StarState

RETRIEVAL_MODES = ("reference", "paper")


@dataclass
class StarMemoryConfig:
    """Sizes and switches of the STAR memory; defaults are the released ``Flash-VStream-7b`` (681 tokens)."""

    spatial_frames: int = 1
    """N_spa: newest frames kept as the spatial memory (a FIFO window)."""
    spatial_size: int = 8
    """P_spa: pooled grid side of spatial and retrieved frames (8 -> 64 tokens per frame)."""
    temporal_clusters: int = 25
    """N_tem: number of weighted k-means clusters in the temporal memory."""
    temporal_size: int = 4
    """P_tem: pooled grid side of temporal frames (4 -> 16 tokens per cluster); divides spatial_size."""
    abstract_slots: int = 25
    """N_abs: slots of the abstract memory (semantic-attention chunk size)."""
    abstract_size: int = 1
    """P_abs: pooled grid side of abstract frames (1 -> one mean token per slot); divides spatial_size."""
    retrieved_frames: int = 3
    """N_ret: key frames retrieved at P_spa resolution (hard-coded 3 in the published code)."""
    attention_dim: int = 32
    """Projection width of the semantic attention's q/k (the released ``attention_model`` uses 32)."""
    update_ratio: float = 0.2
    """r in ``M <- (1 - r) M + r softmax(q(M) k(C)^T / sqrt(attention_dim)) C``; in [0, 1]."""
    retrieval: str = "reference"
    """"reference": the published code (the ids of the heaviest clusters, from a non-stable descending argsort of
    the masses, index the history), what the released weights were trained with, hence the default. "paper": the
    nearest real frame to each of the heaviest centroids."""
    kmeans_iters: int = 10
    """Maximum Lloyd iterations of the temporal k-means."""
    kmeans_tol: float = 1e-4
    """Early stop of the temporal k-means on the summed centroid shift."""
    seed: int = 0
    """Seed of the k-means initial-row draw (the published code was unseeded)."""
    bank_capacity: int = 14400
    """Most history frames the streaming retrieval bank holds (4 h at 1 fps); >= 2 * temporal_clusters."""
    bank_device: str = "cpu"
    """Device of the streaming retrieval bank (pooled P_spa features of past frames)."""
    feature_grid: int = 16
    """P: side of the input patch grid (CLIP ViT-L/14 at 224 px: 16 x 16 = 256 tokens)."""
    feature_dim: int = 1024
    """D: channels of the input features (CLIP ViT-L/14: 1024)."""

    def __post_init__(self):
        for name in ("spatial_frames", "spatial_size", "temporal_clusters", "temporal_size", "abstract_slots",
                     "abstract_size", "attention_dim", "kmeans_iters", "bank_capacity", "feature_grid",
                     "feature_dim"):
            require_int(name, getattr(self, name), minimum=1)
        require_int("retrieved_frames", self.retrieved_frames, minimum=0)
        require_int("seed", self.seed, minimum=0)
        if not 0.0 <= self.update_ratio <= 1.0:
            raise ValueError(f"update_ratio={self.update_ratio!r} must lie in [0, 1].")
        if self.kmeans_tol < 0:
            raise ValueError(f"kmeans_tol={self.kmeans_tol!r} must be >= 0.")
        if self.retrieval not in RETRIEVAL_MODES:
            raise ValueError(f"retrieval={self.retrieval!r} must be one of {RETRIEVAL_MODES}.")
        if self.feature_grid % self.spatial_size:
            raise ValueError(
                f"spatial_size={self.spatial_size} must divide feature_grid={self.feature_grid}."
            )
        for name in ("temporal_size", "abstract_size"):
            if self.spatial_size % getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)} must divide spatial_size={self.spatial_size} "
                                 "(pooling cascades from the spatial grid, as published).")
        if self.bank_capacity < 2 * self.temporal_clusters:
            raise ValueError(f"bank_capacity={self.bank_capacity} must be >= 2 * temporal_clusters "
                             f"= {2 * self.temporal_clusters} so eviction never drops below the clusters.")
        try:
            torch.device(self.bank_device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"bank_device={self.bank_device!r} is not a torch device string.") from err

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> StarMemoryConfig:
        """Build from a dict; unknown keys raise ``ValueError`` listing them and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"StarMemoryConfig: unknown keys {unknown}; known keys are {sorted(known)}.")
        return cls(**values)


class LoadOnlyWeights(nn.Module):
    """Released weights the algorithm never uses, kept as persistent buffers so checkpoints load strictly.

    Buffers, not parameters: they keep their ``state_dict`` keys (``<name>.weight``, ``<name>.bias``) and follow
    ``.to(device/dtype)``, but no optimizer, DDP gradient bucket or ``requires_grad_(True)`` can ever reach them.
    Initialised to the values of an untrained layer (Linear: zeros; LayerNorm: weight ones, bias zeros).

    Args:
        weight_shape: shape of ``weight``.
        bias_size: length of ``bias``.
        weight_fill: initial value of ``weight``.
        eps: the published LayerNorm epsilon (an attribute for inspection; nothing reads it), or ``None``.
    """

    def __init__(self, weight_shape: tuple[int, ...], bias_size: int, weight_fill: float = 0.0,
                 eps: float | None = None):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.full(weight_shape, weight_fill))
        self.register_buffer("bias", torch.zeros(bias_size))


class SemanticAttention(nn.Module):
    """The abstract memory's learned update (the published ``NeuralTuringMachine``).

    Only ``q_proj`` and ``k_proj`` take part in the algorithm; they are the only parameters. ``v_proj``,
    ``out_proj`` and ``out_ln`` are unused by the published algorithm too: they are :class:`LoadOnlyWeights`
    buffers, so the released ``model.attention_model.*`` weights still load strictly under the same keys. The
    published module's dropout is not applied to the attention path.

    Args:
        dim: feature channels D.
        attention_dim: q/k projection width.
    """

    def __init__(self, dim: int, attention_dim: int):
        super().__init__()
        self.attention_dim = attention_dim
        self.q_proj = nn.Linear(dim, attention_dim)
        self.k_proj = nn.Linear(dim, attention_dim)
        self.v_proj = LoadOnlyWeights((attention_dim, dim), attention_dim)
        self.out_proj = LoadOnlyWeights((dim, attention_dim), dim)
        self.out_ln = LoadOnlyWeights((dim,), dim, weight_fill=1.0, eps=1e-12)

    def zero_dependency(self) -> torch.Tensor:
        """A scalar exactly 0 that depends on every trainable parameter (see :meth:`StarMemory.compress`)."""
        return sum(p.sum() for p in self.parameters()) * 0.0

    def update(self, memory: torch.Tensor, chunk: torch.Tensor, update_ratio: float) -> torch.Tensor:
        """One chunk update ``M <- M (1 - decay) + A C`` with ``A = r softmax(q(M) k(C)^T / sqrt(attention_dim))``.

        ``decay`` is computed as the row sums of ``A`` (always ``r`` up to rounding), as published. Computes
        in the promoted dtype of inputs and weights and returns ``memory``'s dtype.

        Args:
            memory: ``(m, d)`` slot tokens.
            chunk: ``(c, d)`` new tokens.
            update_ratio: r.

        Returns:
            ``(m, d)`` updated slots.
        """
        work = torch.promote_types(memory.dtype, self.q_proj.weight.dtype)
        mem, new = memory.to(work), chunk.to(work)
        scores = self.q_proj(mem) @ self.k_proj(new).T / math.sqrt(self.attention_dim)  # (m, c)
        attn = scores.softmax(dim=-1) * update_ratio
        decay = attn.sum(dim=-1, keepdim=True)  # (m, 1)
        return (mem * (1 - decay) + attn @ new).to(memory.dtype)

    def compress(self, frames: torch.Tensor, num_slots: int, update_ratio: float) -> torch.Tensor:
        """Offline abstract memory: the first ``num_slots`` frames, then one update per chunk of as many.

        Args:
            frames: ``(h, n, d)`` pooled history frames (n tokens each).
            num_slots: N_abs.
            update_ratio: r.

        Returns:
            ``(min(h, num_slots), n, d)``; the input itself when ``h <= num_slots``.
        """
        if frames.shape[0] <= num_slots:
            return frames
        _, n, d = frames.shape
        memory = frames[:num_slots].reshape(-1, d)  # (num_slots * n, d)
        for start in range(num_slots, frames.shape[0], num_slots):
            chunk = frames[start:start + num_slots].reshape(-1, d)  # (c * n, d)
            memory = self.update(memory, chunk, update_ratio)
        return memory.reshape(num_slots, n, d)


class StarMemory(VideoMemory[StarState]):
    """The STAR memory: ``[abstract; temporal; retrieved; spatial]`` tokens from CLIP patch features.

    The projector maps memory tokens 1:1 to decoder tokens, so ``num_tokens`` counts memory tokens.

    Args:
        config: sizes and switches; defaults give 681 tokens on a long clip.

    Example:
        >>> memory = StarMemory(StarMemoryConfig(feature_dim=8))
        >>> memory.compress(torch.randn(40, 256, 8)).segments
        {'abstract': 25, 'temporal': 400, 'retrieved': 192, 'spatial': 64}
    """

    def __init__(self, config: StarMemoryConfig | None = None):
        super().__init__()
        self.config = config if config is not None else StarMemoryConfig()
        self.attention = SemanticAttention(self.config.feature_dim, self.config.attention_dim)

    @classmethod
    def tiny(cls, **overrides) -> StarMemory:
        """A CPU-sized memory for tests: 4x4 input grid, 6 channels, small pools and caps (``overrides`` win)."""
        values = dict(feature_grid=4, spatial_size=2, temporal_size=1, abstract_size=1, temporal_clusters=4,
                      abstract_slots=3, retrieved_frames=2, feature_dim=6, attention_dim=5, bank_capacity=16)
        values.update(overrides)
        return cls(StarMemoryConfig(**values)).eval()

    # --- offline ------------------------------------------------------------------------------------------

    def compress(self, features: torch.Tensor, times: torch.Tensor | None = None) -> MemoryOutput:
        """Compress a whole clip; differentiable w.r.t. the attention's q/k weights.

        Every call puts ``q_proj``/``k_proj`` in the autograd graph, also on clips too short to use them
        (history <= N_abs): DDP without ``find_unused_parameters`` needs every trainable parameter in each step's
        graph, so the tokens get an exact ``+ 0`` that depends on them (their gradient is then zero).

        Args:
            features: ``(t, p*p, d)`` CLIP patch tokens, or the same already pooled to the spatial grid,
                ``(t, S*S, d)`` from :meth:`pool_frames` (what a chunked reader keeps: the tokens are identical,
                since every memory is computed from the spatially pooled frames).
            times: ``(t,)`` timestamps (default frame indices), reported as cluster times in ``extras``.

        Returns:
            Tokens in the dtype of ``features``, with ``segments`` and ``extras`` (``temporal_weights``,
            ``temporal_times``, ``retrieved_frames``: indices of the retrieved frames in the clip).
        """
        out = self._compress(features, times)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.attention.parameters()):
            out.tokens = out.tokens + self.attention.zero_dependency().to(out.tokens.dtype)
        return out

    def pool_frames(self, features: torch.Tensor) -> torch.Tensor:
        """``(t, p*p, d)`` CLIP patch tokens -> ``(t, S*S, d)``, the spatial pooling every memory starts from.

        Frames are pooled one by one, so pooling a clip chunk by chunk and concatenating gives the pooling of the
        whole clip; :meth:`compress` takes the result in place of the features.
        """
        self._check_features(features, "pool_frames")
        return pool_grid(features, self.config.spatial_size, name="spatial_size")

    def _compress(self, features: torch.Tensor, times: torch.Tensor | None) -> MemoryOutput:
        cfg = self.config
        self._check_features(features, "compress", pooled_ok=True)
        num_frames = features.shape[0]
        times = frame_times(times, num_frames, 0, features.device)
        if features.shape[1] == cfg.spatial_size**2:
            pooled = features  # already pooled (pool_frames); pooling again would be the identity anyway
        else:
            pooled = pool_grid(features, cfg.spatial_size, name="spatial_size")  # (t, S*S, d)
        num_hist = max(num_frames - cfg.spatial_frames, 0)
        hist, current = pooled[:num_hist], pooled[num_hist:]
        if num_hist == 0:
            return self._assemble(current)
        hist_tem = pool_grid(hist, cfg.temporal_size, name="temporal_size")  # (h, t_*t_, d)
        clusters = weighted_kmeans(
            hist_tem.detach().flatten(1), cfg.temporal_clusters, times=times[:num_hist],
            iters=cfg.kmeans_iters, tol=cfg.kmeans_tol, seed=cfg.seed,
        )
        temporal = clusters.centroids.reshape(-1, *hist_tem.shape[1:])  # (k, t_*t_, d)
        abstract = self.attention.compress(
            pool_grid(hist, cfg.abstract_size, name="abstract_size"), cfg.abstract_slots, cfg.update_ratio
        )
        candidates = hist_tem.detach().flatten(1) if cfg.retrieval == "paper" else None
        picks = self._retrieval_positions(clusters.centroids, clusters.weights, candidates)
        extras = {"temporal_weights": clusters.weights, "temporal_times": clusters.times,
                  "retrieved_frames": picks}
        return self._assemble(current, abstract, temporal, hist[picks], extras)

    def num_tokens(self, num_frames: int, grid_hw: tuple[int, int] | None = None) -> int:
        """Decoder tokens (= memory tokens) for ``num_frames`` frames, from ``compress`` or ``read`` after them.

        Args:
            num_frames: frames of the clip (>= 1).
            grid_hw: the CLIP patch grid; optional, since the config fixes it (``feature_grid`` squared).

        Raises:
            ValueError: on ``num_frames < 1`` or a ``grid_hw`` other than the config's.
        """
        cfg = self.config
        if grid_hw is not None and tuple(grid_hw) != (cfg.feature_grid, cfg.feature_grid):
            raise ValueError(f"grid_hw={tuple(grid_hw)} differs from the STAR memory's fixed feature grid "
                             f"({cfg.feature_grid}, {cfg.feature_grid}); pass grid_hw=None or fix feature_grid.")
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames} must be >= 1.")
        per_frame = cfg.spatial_size**2
        num_spatial = min(cfg.spatial_frames, num_frames)
        num_hist = num_frames - num_spatial
        if num_hist == 0:
            return num_spatial * per_frame
        clusters = min(num_hist, cfg.temporal_clusters)
        return (
            min(num_hist, cfg.abstract_slots) * cfg.abstract_size**2
            + clusters * cfg.temporal_size**2
            + min(cfg.retrieved_frames, clusters) * per_frame
            + num_spatial * per_frame
        )

    def random_features(self, num_frames: int, *, grid_hw: tuple[int, int] | None = None,
                        generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
        """``(num_frames, feature_grid**2, feature_dim)`` standard-normal features, drawn on the CPU."""
        self.num_tokens(1, grid_hw)  # validates grid_hw
        cfg = self.config
        shape = (num_frames, cfg.feature_grid**2, cfg.feature_dim)
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    def exact_streaming_frames(self) -> int:
        """Streaming equals ``compress`` while the history fits the clusters (identity k-means)."""
        return self.config.temporal_clusters + self.config.spatial_frames

    @property
    def bank_capacity(self) -> int:
        return self.config.bank_capacity

    # --- streaming ----------------------------------------------------------------------------------------

    def init_state(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> StarState:
        """Empty preallocated state on ``device`` in ``dtype`` (defaults: those of the module's weights).

        ``read`` returns tokens in ``dtype``; the retrieval bank lives on ``config.bank_device``.
        """
        cfg = self.config
        weight = self.attention.q_proj.weight
        device = weight.device if device is None else torch.device(device)
        dtype = weight.dtype if dtype is None else dtype
        d = cfg.feature_dim

        def zeros(*shape, kind=dtype, where=device):
            return torch.zeros(shape, dtype=kind, device=where)

        bank_rows = min(cfg.bank_capacity, 64)
        return StarState(
            spatial=zeros(cfg.spatial_frames, cfg.spatial_size**2, d),
            spatial_ids=zeros(cfg.spatial_frames, kind=torch.long),
            spatial_times=zeros(cfg.spatial_frames, kind=torch.float32),
            centroids=zeros(cfg.temporal_clusters, cfg.temporal_size**2, d),
            masses=zeros(cfg.temporal_clusters, kind=torch.float32),
            centroid_times=zeros(cfg.temporal_clusters, kind=torch.float32),
            slots=zeros(cfg.abstract_slots, cfg.abstract_size**2, d),
            pending=zeros(cfg.abstract_slots, cfg.abstract_size**2, d),
            bank=FrameBank(
                features=zeros(bank_rows, cfg.spatial_size**2, d, where=torch.device(cfg.bank_device)),
                frame_ids=zeros(bank_rows, kind=torch.long, where=torch.device(cfg.bank_device)),
            ),
        )

    @torch.no_grad()
    def update(
        self, state: StarState, features: torch.Tensor, times: torch.Tensor | None = None
    ) -> StarState:
        """Push ``(n, p*p, d)`` new frames (any n >= 0); frames leaving the spatial window enter the history.

        Args:
            state: from :meth:`init_state` or a previous ``update``; written in place.
            features: new frames' CLIP patch tokens (cast to the state's dtype).
            times: ``(n,)`` timestamps (default: stream indices).

        Returns:
            ``state`` itself.
        """
        cfg = self.config
        self._check_features(features, "update")
        n = features.shape[0]
        if n == 0:
            return state
        device = state.spatial.device
        times = frame_times(times, n, state.frames_seen, device)
        ids = torch.arange(state.frames_seen, state.frames_seen + n, device=device)
        state.frames_seen += n
        new = pool_grid(features.to(device), cfg.spatial_size, name="spatial_size").to(state.spatial.dtype)
        window = torch.cat([state.spatial[:state.num_spatial], new])  # (w, S*S, d), oldest first
        window_ids = torch.cat([state.spatial_ids[:state.num_spatial], ids])
        window_times = torch.cat([state.spatial_times[:state.num_spatial], times])
        num_keep = min(cfg.spatial_frames, window.shape[0])
        num_leave = window.shape[0] - num_keep
        state.spatial[:num_keep] = window[num_leave:]
        state.spatial_ids[:num_keep] = window_ids[num_leave:]
        state.spatial_times[:num_keep] = window_times[num_leave:]
        state.num_spatial = num_keep
        if num_leave > 0:
            self._absorb(state, window[:num_leave], window_times[:num_leave], window_ids[:num_leave])
        return state

    @torch.no_grad()
    def read(self, state: StarState) -> MemoryOutput:
        """Read the memory as tokens (in the state's dtype) without changing ``state``.

        A partial abstract chunk is applied to a copy of the slots.

        Raises:
            ValueError: if no frame was pushed yet.
        """
        cfg = self.config
        if state.frames_seen == 0:
            raise ValueError("read(): the memory is empty; push at least one frame with update() first.")
        current = state.spatial[:state.num_spatial]
        if state.num_centroids == 0:
            return self._assemble(current, extras={"spatial_frames": state.spatial_ids[:state.num_spatial]})
        abstract = state.slots[:state.num_slots]
        if state.num_slots == cfg.abstract_slots and state.num_pending > 0:
            d = cfg.feature_dim
            memory = self.attention.update(
                abstract.reshape(-1, d), state.pending[:state.num_pending].reshape(-1, d), cfg.update_ratio
            )
            abstract = memory.reshape(abstract.shape)  # (N_abs, a*a, d)
        temporal = state.centroids[:state.num_centroids]
        bank = state.bank
        candidates = None
        if cfg.retrieval == "paper":
            bank_tem = pool_grid(bank.features[:bank.size], cfg.temporal_size, name="temporal_size")
            candidates = bank_tem.flatten(1)  # (bank size, t_*t_*d)
        centroids = temporal.flatten(1).to(bank.features.device)
        picks = self._retrieval_positions(centroids, state.masses[:state.num_centroids].to(centroids.device),
                                          candidates)
        retrieved = bank.features[picks].to(current.device)
        extras = {
            "temporal_weights": state.masses[:state.num_centroids].clone(),
            "temporal_times": state.centroid_times[:state.num_centroids].clone(),
            "retrieved_frames": bank.frame_ids[picks].to(current.device),
            "spatial_frames": state.spatial_ids[:state.num_spatial].clone(),
        }
        return self._assemble(current, abstract, temporal, retrieved, extras)

    # --- internals ----------------------------------------------------------------------------------------

    def _absorb(self, state: StarState, frames: torch.Tensor, times: torch.Tensor, ids: torch.Tensor) -> None:
        """Fold ``(h, S*S, d)`` frames that left the spatial window into temporal, abstract and bank."""
        cfg = self.config
        self._absorb_temporal(state, pool_grid(frames, cfg.temporal_size, name="temporal_size"), times)
        self._absorb_abstract(state, pool_grid(frames, cfg.abstract_size, name="abstract_size"))
        state.bank.append(frames, ids, cfg.bank_capacity)

    def _absorb_temporal(self, state: StarState, frames: torch.Tensor, times: torch.Tensor) -> None:
        """Identity while the clusters are not full, then weighted k-means over [centroids; new frames]."""
        cfg = self.config
        count, h = state.num_centroids, frames.shape[0]
        if count + h <= cfg.temporal_clusters:
            state.centroids[count:count + h] = frames
            state.masses[count:count + h] = 1.0
            state.centroid_times[count:count + h] = times
            state.num_centroids = count + h
            return
        rows = torch.cat([state.centroids[:count].flatten(1), frames.flatten(1)])  # (count + h, t_*t_*d)
        weights = torch.cat([state.masses[:count], torch.ones(h, device=rows.device)])  # carried masses
        row_times = torch.cat([state.centroid_times[:count], times])
        clusters = weighted_kmeans(rows, cfg.temporal_clusters, weights, row_times,
                                   iters=cfg.kmeans_iters, tol=cfg.kmeans_tol, seed=cfg.seed)
        state.centroids.copy_(clusters.centroids.reshape(state.centroids.shape))
        state.masses.copy_(clusters.weights)
        state.centroid_times.copy_(clusters.times)
        state.num_centroids = cfg.temporal_clusters

    def _absorb_abstract(self, state: StarState, frames: torch.Tensor) -> None:
        """Fill the slots first, then buffer chunks of N_abs frames and apply each complete chunk."""
        cfg = self.config
        d = cfg.feature_dim
        done = 0
        while done < frames.shape[0]:
            if state.num_slots < cfg.abstract_slots:
                take = min(cfg.abstract_slots - state.num_slots, frames.shape[0] - done)
                state.slots[state.num_slots:state.num_slots + take] = frames[done:done + take]
                state.num_slots += take
            else:
                take = min(cfg.abstract_slots - state.num_pending, frames.shape[0] - done)
                state.pending[state.num_pending:state.num_pending + take] = frames[done:done + take]
                state.num_pending += take
                if state.num_pending == cfg.abstract_slots:
                    memory = self.attention.update(
                        state.slots.reshape(-1, d), state.pending.reshape(-1, d), cfg.update_ratio
                    )
                    state.slots.copy_(memory.reshape(state.slots.shape))
                    state.num_pending = 0
            done += take

    def _retrieval_positions(
        self, centroids: torch.Tensor, masses: torch.Tensor, candidates: torch.Tensor | None
    ) -> torch.Tensor:
        """Positions (in the history / bank) of the retrieved frames.

        ``candidates is None`` ("reference"): the first ``N_ret`` ids of ``torch.argsort(masses,
        descending=True)``, the published call (a NON-stable sort: the order of equal masses is whatever the
        device's sort kernel gives), used as history positions. Otherwise ("paper"): for each of the heaviest
        centroids (stable sort, mass order), the nearest candidate frame not taken yet (so the count never
        shrinks), returned in time order.
        """
        num = min(self.config.retrieved_frames, centroids.shape[0])
        if candidates is None:
            return torch.argsort(masses, descending=True)[:num]
        heaviest = torch.sort(masses, descending=True, stable=True).indices[:num]
        dist = squared_distances(centroids[heaviest].float(), candidates.float())  # (num, candidates)
        picks = []
        for row in range(num):
            nearest = dist[row].argmin()
            picks.append(nearest)
            dist[:, nearest] = float("inf")
        if not picks:
            return heaviest
        return torch.sort(torch.stack(picks)).values

    def _assemble(self, current, abstract=None, temporal=None, retrieved=None, extras=None) -> MemoryOutput:
        """Concatenate ``[abstract; temporal; retrieved; spatial]`` into ``(N, d)`` tokens."""
        d = current.shape[-1]
        parts = {"abstract": abstract, "temporal": temporal, "retrieved": retrieved, "spatial": current}
        flat = {name: current.new_zeros(0, d) if p is None else p.reshape(-1, d) for name, p in parts.items()}
        tokens = torch.cat([t.to(current.dtype) for t in flat.values()])
        return MemoryOutput(tokens, {name: t.shape[0] for name, t in flat.items()}, extras=extras or {})

    def _check_features(self, features: torch.Tensor, where: str, pooled_ok: bool = False) -> None:
        cfg = self.config
        expected = (cfg.feature_grid**2, cfg.feature_dim)
        shapes = {expected, (cfg.spatial_size**2, cfg.feature_dim)} if pooled_ok else {expected}
        if features.dim() != 3 or tuple(features.shape[1:]) not in shapes or not features.is_floating_point():
            pooled = f" or pooled (frames, {cfg.spatial_size**2}, {expected[1]})" if pooled_ok else ""
            raise ValueError(
                f"StarMemory.{where}: features must be float (frames, {expected[0]}, {expected[1]}) "
                f"= (frames, feature_grid**2, feature_dim){pooled}; got {tuple(features.shape)} {features.dtype}. "
                "Fix the input or the config's feature_grid/feature_dim."
            )
        if where == "compress" and features.shape[0] == 0:
            raise ValueError("StarMemory.compress: features has 0 frames; pass at least one frame.")
