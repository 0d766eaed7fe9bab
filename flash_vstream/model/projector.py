"""Projectors from vision-feature space into the language model's embedding space.

Types (the names the released configs use in ``mm_projector_type``):

- ``"linear"``: one ``Linear(vision_dim, text_dim)``;
- ``"mlp{N}x_gelu"``: ``Linear(vision_dim, text_dim)`` followed by ``N - 1`` blocks of ``GELU, Linear(text_dim,
  text_dim)`` (``mlp2x_gelu`` is the released Flash-VStream-7b projector; module indices 0 and 2 match its keys
  ``model.mm_projector.{0,2}.*``);
- ``"identity"``: no parameters; the vision and text widths must be equal.
"""

from __future__ import annotations

import re

from torch import nn

_MLP_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")


def build_projector(projector_type: str, vision_dim: int, text_dim: int) -> nn.Module:
    """Build a projector.

    Args:
        projector_type: ``"linear"``, ``"mlp{N}x_gelu"`` (N >= 1) or ``"identity"``.
        vision_dim: width of the memory's visual tokens.
        text_dim: hidden size of the language model.

    Raises:
        ValueError: for an unknown type, or ``identity`` with unequal widths.
    """
    if projector_type == "linear":
        return nn.Linear(vision_dim, text_dim)
    if projector_type == "identity":
        if vision_dim != text_dim:
            raise ValueError(
                f"projector_type='identity' needs equal widths, got vision {vision_dim} and text {text_dim}; "
                "use 'linear' or 'mlp2x_gelu'"
            )
        return nn.Identity()
    match = _MLP_PATTERN.match(projector_type)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector_type {projector_type!r}; expected 'linear', 'identity' or 'mlp<N>x_gelu'")
    layers: list[nn.Module] = [nn.Linear(vision_dim, text_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(text_dim, text_dim)]
    return nn.Sequential(*layers)
