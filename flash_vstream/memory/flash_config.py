"""Settings of Flash Memory (``FlashMemoryConfig``): the six published keys plus this project's own fields."""

from __future__ import annotations

from dataclasses import dataclass, fields

TEMPORAL_METHODS = ("kmeans_ordered",)
SPATIAL_METHODS = ("klarge_retrieve", "klarge_retrieve_cos", "nearest")
FIDELITY_MODES = ("paper", "reference")

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
    centroid, published default), "klarge_retrieve_cos" (by cosine similarity; see ``fidelity``), or "nearest"
    (the patch at each heavy centroid's rounded timestamp, the paper's "temporal-centric" ablation)."""

    fidelity: str = "paper"
    """Where the published code departs from the paper's method, which one to follow (project-only field).
    "paper" (default): heavy clusters by a stable descending sort of the masses (ties keep time order);
    "klarge_retrieve_cos" takes the MOST similar patch; a clip with fewer distinct patches than N_CSM clusters
    goes through the ordinary weighted k-means. "reference": the published code's operations: heavy clusters by
    ``torch.argsort(masses, descending=True)`` (non-stable: tie order depends on device and torch version);
    "klarge_retrieve_cos" takes the ``argmin`` of the cosine similarity, i.e. the LEAST similar patch; with
    fewer distinct patches than clusters, the CSM is the distinct patches (mass 1 each, sorted by mean member
    time) with the first ``N_CSM - distinct`` input patches prepended (mass 1, their own times; out of time
    order)."""

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
    the state's device. The half-resolution bank used for retrieval stays on the state's device."""

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
        if self.fidelity not in FIDELITY_MODES:
            raise ValueError(
                f"FlashMemoryConfig.fidelity={self.fidelity!r} must be one of {FIDELITY_MODES}"
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
