"""Streaming state of the STAR memory: preallocated fixed-size tensors plus a capped retrieval bank.

Shapes: S: spatial grid side, t_: temporal grid side, a: abstract grid side, d: feature dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flash_vstream.memory.base import MemoryState


@dataclass
class FrameBank:
    """Retrieval bank: P_spa features of frames that left the spatial window, on ``bank_device``, capped.

    Grows by doubling up to the capacity; when full, every other entry is dropped counting back from the
    newest (the newest stays), so older history thins out geometrically and the bank never exceeds its
    capacity. ``frame_ids`` keeps each entry's stream index so retrieval reports real frames.

    Attributes:
        features: ``(allocated, S*S, d)`` storage; rows ``[:size]`` are valid, oldest first.
        frame_ids: ``(allocated,)`` int64 stream index of each row.
        size: number of valid rows.
    """

    features: torch.Tensor
    frame_ids: torch.Tensor
    size: int = 0

    def append(self, features: torch.Tensor, frame_ids: torch.Tensor, capacity: int) -> None:
        """Store ``(n, S*S, d)`` features (moved to the bank's device and dtype), evicting as needed."""
        device = self.features.device
        features, frame_ids = features.to(device, self.features.dtype), frame_ids.to(device)
        done = 0
        while done < features.shape[0]:
            if self.size == capacity:
                self._evict_every_other()
            take = min(features.shape[0] - done, capacity - self.size)
            self._reserve(self.size + take, capacity)
            self.features[self.size:self.size + take] = features[done:done + take]
            self.frame_ids[self.size:self.size + take] = frame_ids[done:done + take]
            self.size += take
            done += take

    def _reserve(self, needed: int, capacity: int) -> None:
        allocated = self.features.shape[0]
        if needed <= allocated:
            return
        new_size = min(capacity, max(needed, 2 * allocated))
        grown = self.features.new_empty((new_size, *self.features.shape[1:]))
        grown[:self.size] = self.features[:self.size]
        ids = self.frame_ids.new_empty(new_size)
        ids[:self.size] = self.frame_ids[:self.size]
        self.features, self.frame_ids = grown, ids

    def _evict_every_other(self) -> None:
        keep = torch.arange((self.size - 1) % 2, self.size, 2, device=self.features.device)
        self.features[:keep.numel()] = self.features[keep]
        self.frame_ids[:keep.numel()] = self.frame_ids[keep]
        self.size = keep.numel()


@dataclass
class StarState(MemoryState):
    """Streaming state of :class:`~flash_vstream.memory.star.StarMemory`.

    The fixed-size part is preallocated by ``init_state``; counters say which rows are valid. ``update`` writes
    into these buffers in place (like a KV cache) and returns the same object.

    Attributes:
        spatial: ``(N_spa, S*S, d)`` newest frames, oldest first; rows ``[:num_spatial]`` valid.
        spatial_ids: ``(N_spa,)`` int64 stream index of each spatial frame.
        spatial_times: ``(N_spa,)`` float32 timestamp of each spatial frame.
        centroids: ``(N_tem, t_*t_, d)`` temporal memory; rows ``[:num_centroids]`` valid.
        masses: ``(N_tem,)`` float32 carried cluster masses (frames per cluster).
        centroid_times: ``(N_tem,)`` float32 weighted-mean timestamps.
        slots: ``(N_abs, a*a, d)`` abstract memory; rows ``[:num_slots]`` valid.
        pending: ``(N_abs, a*a, d)`` frames of the next abstract chunk; rows ``[:num_pending]`` valid.
        bank: the retrieval bank (on ``bank_device``, capped; not part of the fixed-size part).
        num_spatial, num_centroids, num_slots, num_pending: valid-row counters.
        frames_seen: frames pushed so far.
    """

    spatial: torch.Tensor
    spatial_ids: torch.Tensor
    spatial_times: torch.Tensor
    centroids: torch.Tensor
    masses: torch.Tensor
    centroid_times: torch.Tensor
    slots: torch.Tensor
    pending: torch.Tensor
    bank: FrameBank
    num_spatial: int = 0
    num_centroids: int = 0
    num_slots: int = 0
    num_pending: int = 0
    frames_seen: int = 0

    def device_tensors(self) -> list[torch.Tensor]:
        """The fixed-size part: everything but the bank (allocated once by ``init_state``)."""
        return [self.spatial, self.spatial_ids, self.spatial_times, self.centroids, self.masses,
                self.centroid_times, self.slots, self.pending]

    def bank_tensors(self) -> list[torch.Tensor]:
        return [self.bank.features, self.bank.frame_ids]

    @property
    def bank_entries(self) -> int:
        return self.bank.size
