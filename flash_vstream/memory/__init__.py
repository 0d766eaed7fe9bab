"""Memories that turn per-frame vision features into a fixed-size set of visual tokens."""

from flash_vstream.memory.base import MemoryOutput, VideoMemory
from flash_vstream.memory.kmeans import KMeansResult, weighted_kmeans
from flash_vstream.memory.pooling import pool_grid
from flash_vstream.memory.star import SemanticAttention, StarMemory, StarMemoryConfig, StarState

__all__ = [
    "KMeansResult",
    "MemoryOutput",
    "SemanticAttention",
    "StarMemory",
    "StarMemoryConfig",
    "StarState",
    "VideoMemory",
    "pool_grid",
    "weighted_kmeans",
]
