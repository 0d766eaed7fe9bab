"""AM-RoPE: Qwen-VL M-RoPE position ids for Flash Memory tokens (Qwen2-VL and Qwen2.5-VL alike).

Every memory token gets a 3-D id ``(t, h, w)``: ``t`` from the memory's own time index (a DAM token: the true
temporal-patch index of the frame it was retrieved from; a CSM token: its cluster's rounded weighted-mean
timestamp), ``h``/``w`` from its position in its own merged-token grid. All ids are offset by the position
the video block starts at, as in Qwen2-VL.

Two layouts:

- ``"paper"`` (default, the paper's intent): ids as above; the text after the video continues at
  ``max(visual ids) + 1``, so text ids are increasing, unique, and above every visual id.
- ``"reference"`` (the published code, so released weights evaluate as trained): CSM ids are additionally
  shifted by the DAM token count on all three axes, and the text after the video continues where the
  published *virtual grid* ends, ``start + |DAM| + max(N_csm, h_csm, w_csm)``, which late CSM timestamps can
  overtake (an overlap of text and visual ids whose effect on answers has not been measured).

Temporal ids count temporal patches (two frames) on both backbones. Qwen2.5-VL's own ids scale time by
``tokens_per_second`` and the frame interval; AM-RoPE keeps the published Flash-VStream unit instead, so the same
memory gives the same ids whichever backbone reads it.

Works per sample, so batches of any size (with left or right padding) are supported (the published code
handles batch size 1 only).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

ROPE_MODES = ("paper", "reference")


@dataclass
class MemoryLayout:
    """What one video's memory produced, in LLM tokens (after the patch merger).

    Attributes:
        dam_times: ``(r,)`` int64 temporal index of every DAM entry, in token order.
        csm_times: ``(k,)`` int64 rounded timestamp of every CSM centroid, in token order.
        dam_grid: merged-token grid ``(h, w)`` of one DAM entry (full resolution / merge).
        csm_grid: merged-token grid ``(h, w)`` of one CSM centroid (half resolution / merge).
    """

    dam_times: torch.Tensor
    csm_times: torch.Tensor
    dam_grid: tuple[int, int]
    csm_grid: tuple[int, int]

    @property
    def num_dam_tokens(self) -> int:
        return int(self.dam_times.numel()) * self.dam_grid[0] * self.dam_grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_dam_tokens + int(self.csm_times.numel()) * self.csm_grid[0] * self.csm_grid[1]


def _block_ids(times: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(3, n*h*w)`` ids of ``n`` grids of ``h x w`` tokens with temporal ids ``times`` (raster order)."""
    h, w = grid
    n = times.numel()
    t_ids = times.view(n, 1, 1).expand(n, h, w)
    h_ids = torch.arange(h, device=times.device).view(1, h, 1).expand(n, h, w)
    w_ids = torch.arange(w, device=times.device).view(1, 1, w).expand(n, h, w)
    return torch.stack([t_ids, h_ids, w_ids]).reshape(3, -1)


def memory_position_ids(layout: MemoryLayout, start: int, mode: str = "paper") -> tuple[torch.Tensor, int]:
    """AM-RoPE ids of one video block and the id the following text starts at.

    Args:
        layout: the memory's layout for this video.
        start: id of the first video token (the id the video block is offset by).
        mode: ``"paper"`` or ``"reference"`` (see the module docstring).

    Returns:
        ``(3, layout.num_tokens)`` int64 ids in token order ``[DAM; CSM]``, and the next text id.

    Raises:
        ValueError: for an unknown ``mode``.
    """
    if mode not in ROPE_MODES:
        raise ValueError(f"rope_mode must be one of {ROPE_MODES}, got {mode!r}")
    dam = _block_ids(layout.dam_times.long(), layout.dam_grid)
    csm = _block_ids(layout.csm_times.long(), layout.csm_grid)
    if mode == "reference":
        spa_size = layout.num_dam_tokens
        csm = csm + spa_size
        virtual_extent = max(int(layout.csm_times.numel()), *layout.csm_grid)
        ids = torch.cat([dam, csm], dim=1) + start
        return ids, start + spa_size + virtual_extent
    ids = torch.cat([dam, csm], dim=1) + start
    return ids, int(ids.max()) + 1


def sequence_position_ids(token_types: torch.Tensor, layouts: list[MemoryLayout], mode: str = "paper") -> torch.Tensor:
    """``(3, L)`` ids of one unpadded sequence: text runs count up, each video run takes AM-RoPE ids.

    Args:
        token_types: ``(L,)`` 0 for text, 2 for video tokens (``mm_token_type_ids`` without padding).
        layouts: the layouts of this sequence's videos, in order.
        mode: AM-RoPE layout.

    Raises:
        ValueError: on image tokens, or when a video run's length differs from its memory's token count.
    """
    return _sequence_ids(token_types, layouts, mode)[0]


def _sequence_ids(token_types: torch.Tensor, layouts: list[MemoryLayout], mode: str) -> tuple[torch.Tensor, int]:
    """:func:`sequence_position_ids` plus the id a token appended to the sequence would get."""
    parts, next_id, videos = [], 0, iter(layouts)
    for kind, group in itertools.groupby(token_types.tolist()):
        length = len(list(group))
        if kind == 0:
            parts.append(torch.arange(next_id, next_id + length).view(1, -1).expand(3, -1))
            next_id += length
        elif kind == 2:
            layout = next(videos, None)
            if layout is None:
                raise ValueError("the prompt holds more video runs than videos were encoded")
            if layout.num_tokens != length:
                raise ValueError(
                    f"a video run holds {length} <|video_pad|> tokens but Flash Memory produced "
                    f"{layout.num_tokens}; build the prompt with FlashInputBuilder (its count)"
                )
            ids, next_id = memory_position_ids(layout, next_id, mode)
            parts.append(ids.cpu())
        else:
            raise ValueError("the Flash family takes videos only; image tokens are not supported")
    if not parts:
        return torch.zeros(3, 0, dtype=torch.long), next_id
    return torch.cat(parts, dim=1), next_id


def batch_position_ids(
    mm_token_type_ids: torch.Tensor,
    layouts: list[MemoryLayout],
    attention_mask: torch.Tensor | None = None,
    mode: str = "paper",
) -> tuple[torch.Tensor, torch.Tensor]:
    """AM-RoPE ids for a (padded) batch, plus the per-sample deltas generation continues from.

    Args:
        mm_token_type_ids: ``(B, L)`` token types.
        layouts: layouts of all videos of the batch, in batch order then prompt order.
        attention_mask: ``(B, L)`` 1 for real tokens; padding gets id 0 (left or right padding).
        mode: AM-RoPE layout.

    Returns:
        ``position_ids`` ``(3, B, L)`` and ``rope_deltas`` ``(B, 1)`` = next id - real length, as Qwen2-VL.

    Raises:
        ValueError: when videos are left over after the batch is consumed.
    """
    batch, length = mm_token_type_ids.shape
    device = mm_token_type_ids.device
    position_ids = torch.zeros(3, batch, length, dtype=torch.long, device=device)
    deltas = []
    pending = list(layouts)
    for b in range(batch):
        real = attention_mask[b].bool() if attention_mask is not None else torch.ones(length, dtype=torch.bool)
        types = mm_token_type_ids[b][real.to(device)]
        count = len([k for k, _ in itertools.groupby(types.tolist()) if k == 2])
        mine, pending = pending[:count], pending[count:]
        # next_id: where generation continues. In "reference" mode it follows the published virtual grid, which
        # late CSM ids can exceed, so it is not max(ids) + 1.
        ids, next_id = _sequence_ids(types, mine, mode)
        position_ids[:, b, real.to(device)] = ids.to(device)
        deltas.append(next_id - int(types.numel()))
    if pending:
        raise ValueError(f"{len(pending)} encoded videos have no <|video_pad|> run in the prompt")
    return position_ids, torch.tensor(deltas, device=device).view(batch, 1)
