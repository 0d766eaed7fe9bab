"""Feature containers produced by the vision encoders and consumed by the memories.

They live in ``vision/`` so that the memories import them downward (video -> vision -> memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DualResFeatures:
    """Pre-merger ViT tokens of ``t`` temporal patches at two resolutions.

    Slicing (``features[a:b]``) and ``len`` work over temporal patches, like a tensor's first axis.

    Attributes:
        high: ``(t, n_hi, d)`` full-resolution tokens (``n_hi = h*w``, merge windows contiguous).
        low: ``(t, n_lo, d)`` half-resolution tokens (``n_lo = h/pool * w/pool``).
        grid_hw: full-resolution patch grid ``(h, w)``.
        pool_size: down-sampling factor between the two.
    """

    high: torch.Tensor
    low: torch.Tensor
    grid_hw: tuple[int, int]
    pool_size: int = 2

    def __post_init__(self) -> None:
        h, w = self.grid_hw
        t = self.high.shape[0]
        expected_low = (h // self.pool_size) * (w // self.pool_size)
        if self.high.dim() != 3 or self.high.shape[1] != h * w:
            raise ValueError(f"DualResFeatures.high must be (t, {h * w}, d); got {tuple(self.high.shape)}")
        if self.low.dim() != 3 or self.low.shape[:2] != (t, expected_low):
            raise ValueError(
                f"DualResFeatures.low must be ({t}, {expected_low}, d); got {tuple(self.low.shape)}"
            )
        if self.low.shape[2] != self.high.shape[2]:
            raise ValueError(
                f"DualResFeatures: high and low must have the same width d; got {self.high.shape[2]} and "
                f"{self.low.shape[2]}"
            )

    def __len__(self) -> int:
        return self.num_patches

    def __getitem__(self, index: slice) -> DualResFeatures:
        """The temporal patches ``index`` (a slice), same grid and pool size."""
        if not isinstance(index, slice):
            raise TypeError(f"DualResFeatures can only be sliced (features[a:b]); got {type(index).__name__}")
        return DualResFeatures(self.high[index], self.low[index], self.grid_hw, self.pool_size)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DualResFeatures:
        """A copy with both resolutions on ``device`` in ``dtype`` (each ``None`` keeps the current one)."""
        return DualResFeatures(
            self.high.to(device=device, dtype=dtype), self.low.to(device=device, dtype=dtype), self.grid_hw,
            self.pool_size,
        )

    @property
    def num_patches(self) -> int:
        return int(self.high.shape[0])

    @property
    def low_grid_hw(self) -> tuple[int, int]:
        return self.grid_hw[0] // self.pool_size, self.grid_hw[1] // self.pool_size
