"""Grid average pooling of per-frame patch tokens (STAR's published ``compress_spatial_features``).

Shapes: t: frames, p: input grid side (p*p tokens per frame, row-major), s: output grid side, d: channels.
"""

from __future__ import annotations

import math

import torch


def pool_grid(tokens: torch.Tensor, size: int, *, name: str = "size") -> torch.Tensor:
    """Average-pool each frame's ``p x p`` token grid to ``size x size`` non-overlapping blocks.

    ``size == 1`` is the mean over all tokens; ``size == p`` returns the tokens unchanged (values equal).

    Args:
        tokens: ``(t, p*p, d)`` row-major grid tokens.
        size: output grid side; must divide ``p``.
        name: the config field ``size`` came from, named in errors.

    Returns:
        ``(t, size*size, d)`` pooled tokens, row-major, in the input dtype.

    Raises:
        ValueError: if ``tokens`` is not 3-D, its token count is not a perfect square, or ``size`` does not
            divide the grid side.

    Example:
        >>> pool_grid(torch.ones(2, 256, 4), 8).shape
        torch.Size([2, 64, 4])
    """
    if tokens.dim() != 3:
        raise ValueError(f"pool_grid: tokens must be (frames, tokens, dim); got shape {tuple(tokens.shape)}.")
    t, n, d = tokens.shape
    p = math.isqrt(n)
    if p * p != n:
        raise ValueError(f"pool_grid: {n} tokens per frame is not a square grid; pass p*p patch tokens.")
    if not isinstance(size, int) or size < 1 or p % size != 0:
        raise ValueError(f"{name}={size!r} must be a positive divisor of the {p}x{p} token grid; fix {name}.")
    block = p // size
    grid = tokens.reshape(t, size, block, size, block, d)  # (t, s, p/s, s, p/s, d)
    return grid.mean(dim=(2, 4)).reshape(t, size * size, d)  # (t, s*s, d)
