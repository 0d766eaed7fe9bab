"""Feature containers produced by the vision encoders and consumed by the memories.

They live in ``vision/`` so that the memories import them downward (video -> vision -> memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DualResFeatures:
    """Pre-merger ViT tokens of ``t`` temporal patches at two resolutions.

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

    @property
    def num_patches(self) -> int:
        return int(self.high.shape[0])

    @property
    def low_grid_hw(self) -> tuple[int, int]:
        return self.grid_hw[0] // self.pool_size, self.grid_hw[1] // self.pool_size
