"""The memory contract shared by every memory family (STAR, Flash Memory), and the registry of memories.

A memory turns per-frame vision features into a fixed-size set of visual tokens. It is used two ways:

- offline, ``compress(features, times)`` over a whole clip (what the released checkpoints were trained with);
- streaming, ``state = init_state(device, dtype)``, then ``update(state, features, times)`` with any number of
  new frames at a time, then ``read(state)``.

One mutation rule for every memory, like a KV cache:

- ``update(state, features, times)`` writes into ``state`` **in place** and returns that same object;
- ``read(state)`` never changes ``state``;
- ``state.clone()`` is how a caller snapshots a state (an independent deep copy, retrieval bank included).

The fixed-size part of a state (everything but the retrieval bank) does not grow with the number of frames seen
once the memory is full; the retrieval bank has a configured cap. ``num_tokens(num_frames, grid_hw)`` is, for every
memory, the number of tokens the DECODER sees for such a clip (after any token merging between the memory and the
decoder); ``decoder_tokens(output)`` is the same count taken from a real :class:`MemoryOutput`.

Every memory family registers a tiny CPU-sized instance with :func:`register_memory`; the contract test suite runs
over all of them.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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
        """Memory tokens ``N`` (before any merging; see :meth:`VideoMemory.decoder_tokens`)."""
        return int(self.tokens.shape[0])


class MemoryState:
    """Base of every memory's streaming state; each family's state is a dataclass deriving from it.

    Subclasses implement :meth:`device_tensors` (the fixed-size part) and :meth:`bank_tensors` (the capped
    retrieval bank), and carry a ``frames_seen`` attribute: the input frames folded in so far.
    """

    frames_seen: int

    def device_tensors(self) -> list[torch.Tensor]:
        """The tensors of the fixed-size part (everything but the retrieval bank)."""
        raise NotImplementedError

    def bank_tensors(self) -> list[torch.Tensor]:
        """The tensors of the retrieval bank (empty for a memory without one)."""
        return []

    @property
    def bank_entries(self) -> int:
        """Entries (frames or temporal patches) held by the retrieval bank now."""
        return 0

    def device_nbytes(self) -> int:
        """Bytes of the fixed-size part; constant once the memory is full, whatever the frames seen."""
        return sum(t.numel() * t.element_size() for t in self.device_tensors())

    def bank_nbytes(self) -> int:
        """Bytes of the retrieval bank now (bounded by the memory's ``bank_capacity``)."""
        return sum(t.numel() * t.element_size() for t in self.bank_tensors())

    def clone(self):
        """An independent deep copy: later updates of either state never show in the other."""
        return copy.deepcopy(self)

    def to(self, device: torch.device | str):
        """Move every tensor of the state, bank included, to ``device`` and return ``self`` (moved in place)."""
        device = torch.device(device)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _move(getattr(self, f.name), device))
        return self


def _move(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (also inside tuples, lists and nested dataclasses) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_move(v, device) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            setattr(value, f.name, _move(getattr(value, f.name), device))
    return value


State = TypeVar("State", bound=MemoryState)


class VideoMemory(nn.Module, abc.ABC, Generic[State]):
    """Base class of all memories: the streaming contract, offline ``compress`` and the token count.

    Shapes and feature types are the family's own (a ``(t, n, d)`` tensor for STAR, a
    :class:`~flash_vstream.vision.features.DualResFeatures` for Flash Memory); :meth:`random_features` makes
    valid ones.
    """

    @abc.abstractmethod
    def init_state(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> State:
        """An empty state on ``device`` holding features in ``dtype`` (family defaults when ``None``)."""

    @abc.abstractmethod
    def update(self, state: State, features: Any, times: torch.Tensor | None = None) -> State:
        """Fold any number of new frames into ``state`` in place; return that same ``state``."""

    @abc.abstractmethod
    def read(self, state: State) -> MemoryOutput:
        """Read the memory out as visual tokens without changing ``state``."""

    @abc.abstractmethod
    def compress(self, features: Any, times: torch.Tensor | None = None) -> MemoryOutput:
        """Compress a whole clip offline."""

    @abc.abstractmethod
    def num_tokens(self, num_frames: int, grid_hw: tuple[int, int] | None = None) -> int:
        """Tokens the decoder sees for a clip of ``num_frames`` frames on a ``grid_hw`` patch grid."""

    def decoder_tokens(self, output: MemoryOutput) -> int:
        """Tokens the decoder sees for ``output`` (the default: one per memory token)."""
        return output.num_tokens

    @abc.abstractmethod
    def random_features(
        self,
        num_frames: int,
        *,
        grid_hw: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Any:
        """Valid random inputs for ``num_frames`` frames (drawn on the CPU, so every device gets the same)."""

    @abc.abstractmethod
    def exact_streaming_frames(self) -> int:
        """Longest clip (in frames) for which ``read`` after ANY chunking of ``update`` calls equals ``compress``.

        Beyond it the result depends on how frames were grouped into updates (incremental k-means).
        """

    @property
    def bank_capacity(self) -> int | None:
        """Most entries the retrieval bank may hold (``None``: no bank)."""
        return None


@dataclass(frozen=True)
class MemorySpec:
    """A registered memory: a builder of a TINY (CPU-sized, seconds-fast) instance for the contract tests.

    Attributes:
        name: registry key.
        build: zero-argument callable returning a fresh memory.
        grid_hw: the patch grid to pass to ``num_tokens``/``random_features`` (``None`` when the memory's grid is
            fixed by its config).
    """

    name: str
    build: Callable[[], VideoMemory]
    grid_hw: tuple[int, int] | None = None


_MEMORIES: dict[str, MemorySpec] = {}


def register_memory(
    name: str, build: Callable[[], VideoMemory], *, grid_hw: tuple[int, int] | None = None
) -> MemorySpec:
    """Register a tiny builder under ``name``; every registered memory gets the contract test suite.

    Raises:
        ValueError: if ``name`` is already registered with another builder.
    """
    spec = MemorySpec(name, build, grid_hw)
    known = _MEMORIES.get(name)
    if known is not None and known != spec:
        raise ValueError(f"register_memory: {name!r} is already registered ({known.build!r}); pick another name.")
    _MEMORIES[name] = spec
    return spec


def registered_memories() -> dict[str, MemorySpec]:
    """Name -> :class:`MemorySpec` of every registered memory (a copy)."""
    return dict(_MEMORIES)


def require_int(name: str, value, minimum: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")


def frame_times(times: torch.Tensor | None, n: int, offset: int, device, unit: str = "frame") -> torch.Tensor:
    """``(n,)`` float32 timestamps on ``device``: the given ones, or ``offset, offset + 1, ...``.

    Raises:
        ValueError: when ``times`` is not one timestamp per ``unit``.
    """
    if times is None:
        return torch.arange(offset, offset + n, device=device, dtype=torch.float32)
    if tuple(times.shape) != (n,):
        raise ValueError(f"times must have shape ({n},), one timestamp per {unit}; got {tuple(times.shape)}.")
    return times.to(device=device, dtype=torch.float32)
