"""The memory contract shared by every memory family (STAR, Flash Memory).

A memory turns per-frame vision features into a fixed-size set of visual tokens. It is used two ways:

- offline, ``compress(features, times)`` over a whole clip (what the released checkpoints were trained with);
- streaming, ``init_state`` -> ``update(state, features, times)`` (any number of new frames)
  -> ``read(state)``.

State is an explicit object returned by ``update``; a memory never mutates hidden attributes in ``forward``.
The GPU part of a state has a fixed size however many frames were seen; retrieval banks have a configured cap.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MemoryOutput:
    """What a memory hands to the model on a read.

    Attributes:
        tokens: ``(N, D)`` visual tokens before projection, in the order the decoder sees them.
        segments: ordered mapping component name -> token count; the counts sum to ``N``.
        positions: per-token time indices the decoder needs (``(N,)`` temporal index for Flash Memory's
            AM-RoPE), or ``None`` when the family uses plain 1-D positions (STAR).
        extras: family-specific diagnostics (cluster weights, retrieved frame indices, ...).
    """

    tokens: torch.Tensor
    segments: dict[str, int]
    positions: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


class VideoMemory(nn.Module, abc.ABC):
    """Base class of all memories. Subclasses implement the four contract calls and ``num_tokens``."""

    @abc.abstractmethod
    def init_state(self, device: torch.device | str | None = None):
        """Return an empty state on ``device``."""

    @abc.abstractmethod
    def update(self, state, features: torch.Tensor, times: torch.Tensor | None = None):
        """Fold new frames into ``state`` and return the new state (incremental, for streams)."""

    @abc.abstractmethod
    def read(self, state) -> MemoryOutput:
        """Read the memory out as visual tokens."""

    @abc.abstractmethod
    def compress(self, features: torch.Tensor, times: torch.Tensor | None = None) -> MemoryOutput:
        """Compress a whole clip offline."""

    @abc.abstractmethod
    def num_tokens(self, num_frames: int) -> int:
        """How many visual tokens ``compress`` yields for a clip of ``num_frames`` frames."""
