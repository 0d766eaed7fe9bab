"""Memories that turn per-frame vision features into a fixed-size set of visual tokens.

Every memory implements :class:`VideoMemory` and is registered here with a tiny builder, so the contract test
suite (``tests/test_memory_contract.py``) covers it. A new memory is one module plus one registration line.
"""

from flash_vstream.memory.base import (
    MemoryOutput,
    MemorySpec,
    MemoryState,
    VideoMemory,
    register_memory,
    registered_memories,
)
from flash_vstream.memory.flash import FlashMemory, FlashMemoryConfig, FlashMemoryState
from flash_vstream.memory.kmeans import KMeansResult, weighted_kmeans
from flash_vstream.memory.pooling import pool_grid
from flash_vstream.memory.star import SemanticAttention, StarMemory, StarMemoryConfig
from flash_vstream.memory.star_state import StarState

register_memory("star", StarMemory.tiny)
register_memory("star-paper", lambda: StarMemory.tiny(retrieval="paper"))
register_memory("flash", FlashMemory.tiny, grid_hw=(8, 4))
register_memory("flash-reference", lambda: FlashMemory.tiny(fidelity="reference"), grid_hw=(8, 4))

__all__ = [
    "FlashMemory",
    "FlashMemoryConfig",
    "FlashMemoryState",
    "KMeansResult",
    "MemoryOutput",
    "MemorySpec",
    "MemoryState",
    "SemanticAttention",
    "StarMemory",
    "StarMemoryConfig",
    "StarState",
    "VideoMemory",
    "pool_grid",
    "register_memory",
    "registered_memories",
    "weighted_kmeans",
]
