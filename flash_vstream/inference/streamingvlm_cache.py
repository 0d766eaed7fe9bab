r"""StreamingVLM's KV cache manager: explicit segment records, eviction by segment, contiguous RoPE.

The cache holds, in this order (one :class:`Block` per retained segment)::

    system        <|im_start|>system\\n{system prompt}<|im_end|>\\n
    prev_head     <|im_start|>previous text\\n
    prev_sink     the first ``text_sink`` tokens of earlier text     (the text attention sink)
    prev_window   the last ``text_window`` tokens of earlier text   (the recent-text window)
    prev_tail     <|im_end|>\\n
    per round (one :class:`Round` per retained 1-s chunk, oldest first):
      user_head       <|im_start|>user\\nTime=12.0-13.0s
      vision          <|vision_start|> <|video_pad|> x N <|vision_end|>     (its own grid_thw)
      user_tail       [query, first round only] <|im_end|>\\n
      assistant_head  <|im_start|>assistant\\n
      assistant_body  what the model said this second ("\\n words", possibly just "\\n")
      assistant_mark  " ..." (the end-of-second marker the model was trained to emit)
      assistant_tail  <|im_end|>\\n

Eviction before round ``i`` (every size a setting), for each retained round of age ``a = i - round.index``:
``a >= text_rounds``: its body moves (K/V moved, not recomputed) to the end of the previous text, first filling
the sink, then the window, and its assistant blocks are dropped; ``a >= vision_window``: its vision block is
dropped; ``a >= max(text_rounds, vision_window)``: the round is dropped. The window then keeps only its last
``text_window`` tokens. No token pattern is ever scanned: the records say where everything is.

Positions (the M-RoPE rule of Qwen2.5-VL): a text token takes ``(p, p, p)`` with ``p`` one more than the
previous token's largest component; a vision block of LLM grid ``(t, h, w)`` takes
``(floor(t_idx * temporal_scale), h_idx, w_idx) + offset``, ``temporal_scale = temporal_patch_size / fps *
tokens_per_second``. After an eviction every retained block is placed again from the start (contiguous RoPE), so
positions stay bounded however long the stream runs.

The cache is a plain transformers ``DynamicCache`` holding *rotated* keys (stock attention). Placing a block
again shifts all three components of each of its tokens by one integer ``d`` (a block's positions are its own
layout plus its offset), and M-RoPE rotates each frequency pair by the angle of one component times its inverse
frequency; so the shift is the 1-D rotation ``R(d)`` with the model's ``inv_freq``, applied per token to the
keys after a per-layer ``index_select`` (:func:`reposition`). Values never change.

Shapes: n tokens, L cached tokens, d head dim, H KV heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ROUND_PARTS", "Block", "CacheLayout", "Round", "Run", "compact", "gather_plan", "mark_prefilled",
           "pending_inputs", "reposition", "rotate_keys", "split_runs", "text_block", "vision_block"]

ROUND_PARTS = ("user_head", "vision", "user_tail", "assistant_head", "assistant_body", "assistant_mark",
               "assistant_tail")
ASSISTANT_PARTS = ("assistant_head", "assistant_body", "assistant_mark", "assistant_tail")


@dataclass
class Run:
    """A stretch of a block's tokens that sits contiguously in the cache.

    Attributes:
        slot: cache index of its first token.
        length: its tokens.
        base: the position its local zero had when its keys were rotated (text: its first token's position).
    """

    slot: int
    length: int
    base: int


@dataclass
class Block:
    """One retained segment.

    Attributes:
        kind: its role (see the module docstring).
        ids: ``(n,)`` token ids (CPU int64).
        local: ``(3, n)`` positions relative to the block's offset for a vision block; ``None`` for text
            (``(j, j, j)`` for its ``j``-th token).
        grid: the vision block's LLM grid ``(t, h, w)`` (after the spatial merge), else ``None``.
        offset: its first position (set by :meth:`CacheLayout.place`).
        runs: where its tokens sit in the cache (empty: not prefilled yet).
        vision: ``(m, hidden)`` vision tokens, kept only where the cache may be re-prefilled ("recompute").
        span: a vision block's positions (its local maximum + 1).
    """

    kind: str
    ids: torch.Tensor
    local: torch.Tensor | None = None
    grid: tuple[int, int, int] | None = None
    offset: int = 0
    runs: list[Run] = field(default_factory=list)
    vision: torch.Tensor | None = None
    span: int = 0  # vision blocks: local max + 1, computed once

    def __post_init__(self) -> None:
        if self.local is not None:
            self.span = int(self.local.max()) + 1 if self.length else 0

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])

    @property
    def extent(self) -> int:
        """Positions the block consumes: the next text token goes at ``offset + extent``."""
        return self.length if self.local is None else self.span

    @property
    def cached(self) -> bool:
        return sum(run.length for run in self.runs) == self.length and self.length > 0

    def positions(self) -> torch.Tensor:
        """``(3, n)`` absolute positions now."""
        if self.local is None:
            return (torch.arange(self.length) + self.offset).expand(3, -1)
        return self.local + self.offset


def text_block(kind: str, ids: list[int] | torch.Tensor) -> Block:
    return Block(kind, torch.as_tensor(ids, dtype=torch.long).reshape(-1))


def vision_block(start_id: int, pad_id: int, end_id: int, grid: tuple[int, int, int], temporal_scale: float,
                 vision: torch.Tensor | None = None) -> Block:
    """``<|vision_start|>`` + ``t*h*w`` pads + ``<|vision_end|>``, M-RoPE laid out for an LLM grid ``(t, h, w)``."""
    t, h, w = grid
    temporal = (torch.arange(t) * temporal_scale).long()  # truncated, as transformers' get_rope_index does
    tt, hh, ww = torch.meshgrid(temporal, torch.arange(h), torch.arange(w), indexing="ij")
    pads = torch.stack([tt, hh, ww]).reshape(3, -1) + 1  # after the start token
    end = int(pads.max()) + 1
    local = torch.cat([torch.zeros(3, 1, dtype=torch.long), pads, torch.full((3, 1), end)], dim=1)
    ids = torch.tensor([start_id] + [pad_id] * (t * h * w) + [end_id])
    return Block("vision", ids, local=local, grid=(t, h, w), vision=vision)


@dataclass
class Round:
    """One chunk: its time span and its retained blocks (keys of :data:`ROUND_PARTS`, in that order)."""

    index: int
    start: float
    end: float
    parts: dict[str, Block] = field(default_factory=dict)


@dataclass
class Eviction:
    """What one eviction did (for statistics and tests)."""

    dropped_tokens: int = 0
    moved_tokens: int = 0


class CacheLayout:
    """The ordered segment records of one stream's cache and the eviction policy over them.

    Args:
        system: the system block; prev_head / prev_tail: the previous-text block's markup.
        prev_text: ids of the caller's previous text (split into sink and window at once).
        text_sink, text_window, vision_window, text_rounds: the window sizes (``None``: unbounded).
    """

    def __init__(self, system: Block, prev_head: Block, prev_tail: Block, prev_text: torch.Tensor, *,
                 text_sink: int | None, text_window: int | None, vision_window: int | None,
                 text_rounds: int | None):
        self.text_sink, self.text_window = text_sink, text_window
        self.vision_window, self.text_rounds = vision_window, text_rounds
        self.system, self.prev_head, self.prev_tail = system, prev_head, prev_tail
        self.prev_sink, self.prev_window = text_block("prev_sink", []), text_block("prev_window", [])
        self.rounds: list[Round] = []
        self._append_previous(self.prev_sink, self.prev_window, prev_text, runs=[])
        self._trim_window()
        self.place()

    # --- the sequence ---------------------------------------------------------------------------------------
    def blocks(self) -> list[Block]:
        """Every block in cache order."""
        head = [self.system, self.prev_head, self.prev_sink, self.prev_window, self.prev_tail]
        return head + [block for r in self.rounds for block in r.parts.values()]

    def place(self) -> None:
        """Give every block its offset: contiguous from 0, each block starting at the previous extent's end."""
        position = 0
        for block in self.blocks():
            block.offset = position
            position += block.extent

    @property
    def next_position(self) -> int:
        """Position of a text token appended now (max + 1)."""
        last = [b for b in self.blocks() if b.length][-1]
        return last.offset + last.extent

    def cached_length(self) -> int:
        return sum(run.length for block in self.blocks() for run in block.runs)

    def ids(self) -> torch.Tensor:
        """``(N,)`` all retained ids (cached and pending), in order."""
        return torch.cat([block.ids for block in self.blocks()])

    def max_position(self) -> int:
        return self.next_position - 1

    def pending(self) -> list[Block]:
        """Blocks not prefilled yet (always a suffix of :meth:`blocks`)."""
        return [block for block in self.blocks() if block.length and not block.cached]

    # --- eviction -------------------------------------------------------------------------------------------
    def evict(self, new_index: int) -> Eviction:
        """Apply the policy before round ``new_index`` is added; then :meth:`place` (positions contiguous).

        Only records change; :func:`reposition` makes the cache follow (the blocks' runs say where their keys
        were and at which positions they were rotated).
        """
        stats = Eviction()
        kept = []
        for r in self.rounds:
            age = new_index - r.index
            if _reached(age, self.text_rounds) and "assistant_body" in r.parts:
                body = r.parts["assistant_body"]
                self._append_previous(self.prev_sink, self.prev_window, body.ids, runs=body.runs)
                stats.moved_tokens += body.length
            if _reached(age, self.text_rounds):
                for part in ASSISTANT_PARTS:
                    stats.dropped_tokens += _drop(r.parts, part)
            if _reached(age, self.vision_window):
                stats.dropped_tokens += _drop(r.parts, "vision")
            if _reached(age, self.text_rounds) and _reached(age, self.vision_window):
                stats.dropped_tokens += sum(block.length for block in r.parts.values())
                continue
            kept.append(r)
        self.rounds = kept
        stats.dropped_tokens += self._trim_window()
        self.place()
        return stats

    def _append_previous(self, sink: Block, window: Block, ids: torch.Tensor, runs: list[Run]) -> None:
        """Append text to the previous-text block: into the sink until it is full, the rest to the window."""
        room = len(ids) if self.text_sink is None else max(0, self.text_sink - sink.length)
        room = room if window.length == 0 else 0  # once the window holds text, the sink is closed
        to_sink, to_window = split_runs(runs, room)
        sink.ids, sink.runs = torch.cat([sink.ids, ids[:room]]), sink.runs + to_sink
        window.ids, window.runs = torch.cat([window.ids, ids[room:]]), window.runs + to_window

    def _trim_window(self) -> int:
        if self.text_window is None or self.prev_window.length <= self.text_window:
            return 0
        drop = self.prev_window.length - self.text_window
        self.prev_window.ids = self.prev_window.ids[drop:]
        _, self.prev_window.runs = split_runs(self.prev_window.runs, drop)
        return drop


def _reached(age: int, limit: int | None) -> bool:
    return limit is not None and age >= limit


def _drop(parts: dict[str, Block], name: str) -> int:
    block = parts.pop(name, None)
    return 0 if block is None else block.length


def split_runs(runs: list[Run], count: int) -> tuple[list[Run], list[Run]]:
    """Runs of the first ``count`` tokens and of the rest (text runs: a cut shifts the base by the tokens cut)."""
    head, tail, left = [], [], count
    for run in runs:
        if left >= run.length:
            head.append(run)
            left -= run.length
        elif left > 0:
            head.append(Run(run.slot, left, run.base))
            tail.append(Run(run.slot + left, run.length - left, run.base + left))
            left = 0
        else:
            tail.append(run)
    return head, tail


# --- the cache follows the records ------------------------------------------------------------------------


def gather_plan(layout: CacheLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, delta)``: cache slots of the retained tokens in their new order, and each one's position shift.

    A text block's runs sit back to back in its new layout; a vision block is one run whose base is its offset.
    """
    index, delta = [], []
    for block in layout.blocks():
        start = 0
        for run in block.runs:
            new_base = block.offset + (start if block.local is None else 0)
            index.append(torch.arange(run.slot, run.slot + run.length))
            delta.append(torch.full((run.length,), new_base - run.base))
            start += run.length
    if not index:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(index), torch.cat(delta)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate rotated keys ``(b, H, L, d)`` by ``delta`` (``(L,)`` integer shifts): ``R(delta) k``, in fp32.

    ``rotate_half`` convention (transformers): pair ``(i, i + d/2)`` turns by ``delta * inv_freq[i]``.
    """
    angle = delta.to(keys.device, torch.float64)[:, None] * inv_freq.to(keys.device, torch.float64)[None]
    angle = torch.cat([angle, angle], dim=-1)  # (L, d)
    cos, sin = angle.cos().float(), angle.sin().float()
    k = keys.float()
    half = k.shape[-1] // 2
    rotated = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * cos + rotated * sin).to(keys.dtype)


def reposition(cache, layout: CacheLayout, inv_freq: torch.Tensor) -> bool:
    """Make ``cache`` follow ``layout`` after :meth:`CacheLayout.evict`: per-layer ``index_select``, delta rotation.

    Returns:
        Whether anything changed. Afterwards every block is one contiguous run at its new offset.
    """
    index, delta = gather_plan(layout)
    cached = sum(layer.keys.shape[-2] for layer in cache.layers[:1] if layer.keys is not None)
    changed = not (len(index) == cached and torch.equal(index, torch.arange(cached)) and not delta.any())
    if changed:
        device_index = index.to(cache.layers[0].keys.device)
        moved = bool(delta.any())
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(2, device_index)
            layer.values = layer.values.index_select(2, device_index)
            if moved:
                layer.keys = rotate_keys(layer.keys, delta, inv_freq)
    compact(layout)
    return changed


def compact(layout: CacheLayout) -> None:
    """Records after a gather: each cached block one run, slots back to back in block order."""
    slot = 0
    for block in layout.blocks():
        length = sum(run.length for run in block.runs)
        if length:
            block.runs = [Run(slot, length, block.offset)]
            slot += length


def mark_prefilled(blocks: list[Block], start_slot: int) -> int:
    """Record that ``blocks`` were just prefilled at cache slots from ``start_slot``; returns the next slot."""
    slot = start_slot
    for block in blocks:
        done = sum(run.length for run in block.runs)
        new = block.length - done
        block.runs.append(Run(slot, new, block.offset + (done if block.local is None else 0)))
        slot += new
    return slot


def pending_inputs(blocks: list[Block]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (n,), positions (3, n))`` of the tokens of ``blocks`` not in the cache yet."""
    ids, positions = [], []
    for block in blocks:
        done = sum(run.length for run in block.runs)
        ids.append(block.ids[done:])
        positions.append(block.positions()[:, done:])
    return torch.cat(ids), torch.cat(positions, dim=1)
