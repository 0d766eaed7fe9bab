"""Memory prefix cache: the KV cache of a prompt up to its last memory token, built once per memory change.

Every question about a stream is asked with the same prompt head: the system text, the start of the user turn
and the memory's visual tokens (hundreds to thousands of them). Only what follows (the question, the assistant
turn) changes. So the session prefills that head once per memory version, keeps its key/value cache (a
transformers :class:`~transformers.DynamicCache`), and answers each question by prefilling only the question's
own tokens on a *copy* of it. The kept cache is never mutated, so any number of questions can start from it.

Where a prompt is cut: right after its last visual token (:func:`prefix_length`). The text before the visual
tokens never depends on the question for the templates this project uses, but a cache entry is only reused
when the candidate prompt's head is token-for-token the entry's (:meth:`PrefixCache.get`), so a template that
did put the question first would simply miss, never answer from a wrong cache.

With greedy decoding an answer from the cache is token-identical to one from a full prefill (tested at fp32
for both families): the question's tokens attend to the same keys and values at the same positions.

>>> cache = PrefixCache()
>>> cache.get(version=1, token_ids=(1, 2, 3)) is None
True
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

__all__ = ["MemoryPrefix", "PrefixCache", "cache_nbytes", "prefix_length"]


def prefix_length(is_visual: torch.Tensor) -> int:
    """Tokens of the cacheable head of a prompt: up to and including its last visual token.

    At least one token is left for the question's own prefill (``generate`` needs one uncached input), so a
    prompt that ends on its visual tokens (the ``plain`` template) keeps its last visual token out of the head.

    Args:
        is_visual: ``(L,)`` bool, True at visual-token positions of one prompt.

    Raises:
        ValueError: when the prompt holds no visual token.
    """
    positions = is_visual.nonzero()
    if positions.numel() == 0:
        raise ValueError("the prompt holds no visual token, so it has no memory prefix to cache")
    return min(int(positions.max()) + 1, int(is_visual.shape[0]) - 1)


def cache_nbytes(cache: DynamicCache) -> int:
    """Bytes held by the keys and values of ``cache``."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass(frozen=True)
class MemoryPrefix:
    """The prefilled head of a prompt for one memory version.

    Attributes:
        version: the memory version (number of updates) it was built from.
        token_ids: the head's token ids (with the placeholder ids of the visual tokens).
        snapshot: the memory read-out it was built from (family-specific, see ``session_backends``), so a
            question can reuse it instead of reading the memory again.
        cache: the key/value cache of the head; never mutated (use :meth:`fork`).
    """

    version: int
    token_ids: tuple[int, ...]
    snapshot: Any = field(repr=False)
    cache: DynamicCache = field(repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    def fork(self) -> DynamicCache:
        """A private copy of the cache for one question (generation appends to it)."""
        return copy.deepcopy(self.cache)

    def nbytes(self) -> int:
        return cache_nbytes(self.cache)


class PrefixCache:
    """Holds the newest :class:`MemoryPrefix` and counts how questions used it. Thread-safe.

    Only one entry is kept: an older memory version is never asked about again, so keeping it would only hold
    device memory.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: MemoryPrefix | None = None
        self.hits = 0
        """Questions answered from a kept prefix."""
        self.misses = 0
        """Questions that had to prefill their prefix themselves."""
        self.builds = 0
        """Prefixes built (by the ingest worker or by questions)."""

    @property
    def latest(self) -> MemoryPrefix | None:
        return self._entry

    @property
    def latest_version(self) -> int | None:
        entry = self._entry
        return None if entry is None else entry.version

    def get(self, version: int, token_ids: tuple[int, ...]) -> MemoryPrefix | None:
        """The kept prefix when it is for ``version`` and exactly ``token_ids``; counts a hit or a miss."""
        with self._lock:
            entry = self._entry
            hit = entry is not None and entry.version == version and entry.token_ids == token_ids
            if hit:
                self.hits += 1
                return entry
            self.misses += 1
            return None

    def put(self, entry: MemoryPrefix) -> None:
        """Keep ``entry`` (replacing an older one; an entry for an older version than the kept one is ignored)."""
        with self._lock:
            self.builds += 1
            if self._entry is None or entry.version >= self._entry.version:
                self._entry = entry

    def clear(self) -> None:
        with self._lock:
            self._entry = None
