r"""StreamingVLM streaming: live commentary every second and questions against the current cache.

Each 1-s chunk (2 frames at 2 fps, one temporal patch) is one chat round (:mod:`flash_vstream.inference.
streamingvlm_cache` has the layout): the cache is evicted by the policy, the ViT encodes the new chunk only, the
round's user turn (``Time=a-bs`` + its vision) is prefilled on top of the retained cache, and the model speaks
at most ``max_new_tokens`` (20) tokens. A silent second is the learned empty turn ``"\\n ..."``: the trailing
``" ..."`` marker is stripped from what is reported, so silence reads as an empty string. The generated turn
stays in the cache (its text later moves into the previous-text block).

A question (:meth:`StreamingVLMSessionBackend.generate`, through ``StreamSession.ask``) is a user turn put after
the cache, answered, and cut off again: the cache is exactly as before, so commentary goes on unchanged.

Cache policies (``StreamingVLMSettings.policy``): ``"streamingvlm"`` (sink + windows, retained KV re-positioned
with delta rotations), ``"full"`` (no eviction), ``"sliding"`` (no eviction, a fresh cache every
``restart_seconds``), ``"recompute"`` (the same retained tokens as ``"streamingvlm"``, re-prefilled from scratch
every chunk with fresh positions; the ViT still runs once per frame, its tokens are kept).

Public entry points: :func:`commentate` (a generator of :class:`Commentary`, used by the evaluators) and
:class:`StreamingVLMSessionBackend` (the family's ``StreamSession`` backend).

>>> for line in commentate(vs, source, previous_text="Lakers vs. Celtics"):   # doctest: +SKIP
...     print(f"{line.start:.0f}s {line.text}")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from flash_vstream.inference.kv import cache_nbytes
from flash_vstream.inference.session_backends import Prompt, Snapshot
from flash_vstream.inference.streamingvlm_cache import (
    ROUND_PARTS,
    CacheLayout,
    Round,
    Run,
    mark_prefilled,
    pending_inputs,
    reposition,
    split_runs,
    text_block,
    vision_block,
)
from flash_vstream.inference.streamingvlm_decode import StreamDecoder, crop_cache
from flash_vstream.model.streamingvlm import StreamingVLMSettings, encode_video, forward_embeds, settings_of
from flash_vstream.vision.qwen2vl import FlashFrameProcessor

__all__ = ["Commentary", "StreamingVLMInputBuilder", "StreamingVLMSessionBackend", "StreamingVLMState", "commentate"]

MARK = " ..."
"""End-of-second marker of every assistant turn (a silent turn is ``"\\n" + MARK``)."""
VIDEO_TOKEN_TYPE = 2
SPEAK_CHECK_EVERY = 4
"""Commentary tokens decoded between two looks for the end of the turn (fewer device waits; at most 3 tokens
decoded past the end and discarded)."""


@dataclass(frozen=True)
class Commentary:
    """What the model said about one chunk: ``text`` ("" when silent) over ``[start, end]`` seconds."""

    start: float
    end: float
    text: str


@dataclass
class StreamingVLMState:
    """One stream: the segment records, the KV cache that follows them, and what was said.

    Attributes:
        layout: the segment records (:class:`~flash_vstream.inference.streamingvlm_cache.CacheLayout`).
        cache: the transformers ``DynamicCache`` (rotated keys) of the prefilled blocks.
        rounds: chunks processed so far (the next round's index).
        window_start: stream time the current cache began ("sliding" restarts it).
        last_end: end time of the last chunk.
        commentary: every chunk's :class:`Commentary`, in order.
        max_position_seen: the largest position any token ever had (bounded under the "streamingvlm" policy).
    """

    layout: CacheLayout
    cache: DynamicCache
    rounds: int = 0
    window_start: float | None = None
    last_end: float | None = None
    commentary: list[Commentary] = field(default_factory=list)
    max_position_seen: int = 0
    bank_entries: int = 0

    def device_nbytes(self) -> int:
        """Bytes of the KV cache."""
        return cache_nbytes(self.cache)

    def bank_nbytes(self) -> int:
        return 0

    @property
    def num_vision_tokens(self) -> int:
        return sum(r.parts["vision"].length - 2 for r in self.layout.rounds if "vision" in r.parts)


class StreamingVLMSessionBackend:
    """The StreamingVLM family's session backend (see the module docstring and ``session_backends``).

    Args:
        vs: a loaded StreamingVLM-family ``FlashVStream``.
        settings: the streaming settings (default: the model's, ``config.streamingvlm_settings``).
        previous_text: text the stream starts from in the previous-text block (title, background, earlier
            commentary); cut to its first ``text_sink`` + last ``text_window`` tokens.
        speak: generate commentary every chunk (False: every chunk gets the silent turn, for question-only use).
        on_commentary: called with each chunk's :class:`Commentary` as it is produced (e.g. to print it live).
        seed: seed of the sampler (``do_sample``), for reproducible runs.
        decode: how tokens are decoded (:class:`~flash_vstream.inference.streamingvlm_decode.StreamDecoder`):
            "auto" (a static cache and a compiled step on CUDA, eager elsewhere), "eager", "static", "compiled".
        warmup: compile the decode step here, sized for the cache the windows settle at (about 40 s on an H200
            for the 7B shape), rather than in the stream's first second.

    Raises:
        ValueError: when a chunk is not a whole number of temporal patches.
    """

    def __init__(self, vs, settings: StreamingVLMSettings | None = None, *, previous_text: str = "",
                 speak: bool = True, on_commentary: Callable[[Commentary], None] | None = None,
                 seed: int | None = None, decode: str = "auto", warmup: bool = True):
        self.vs, self.model, self.tokenizer = vs, vs.model, vs.tokenizer
        self.settings = settings or settings_of(vs.model)
        config = vs.model.config
        vision = config.vision_config
        self.frames_per_step = self.settings.frames_per_chunk
        if self.frames_per_step % vision.temporal_patch_size:
            raise ValueError(f"a chunk holds {self.frames_per_step} frames (fps x chunk_seconds), not a whole number "
                             f"of temporal patches of {vision.temporal_patch_size}; change fps or chunk_seconds")
        self.temporal_scale = vision.temporal_patch_size / self.settings.fps * vision.tokens_per_second
        self.merge = vision.spatial_merge_size
        self.previous_text, self.speak, self.on_commentary = previous_text, speak, on_commentary
        self.seed = seed
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        device = self.model.device
        self.processor = FlashFrameProcessor(
            max_pixels=self.settings.max_pixels, min_pixels=self.settings.min_pixels, patch_size=vision.patch_size,
            merge_size=self.merge, temporal_patch_size=vision.temporal_patch_size, pool_size=1,
            device=str(device) if device.type == "cuda" else None)
        self.ids = {name: self.tokenizer.convert_tokens_to_ids(token) for name, token in (
            ("im_start", "<|im_start|>"), ("im_end", "<|im_end|>"))}
        self.mark_ids = self._encode(MARK)
        self.banned = [config.video_token_id, config.image_token_id]
        self.markup = {name: self._encode(text) for name, text in (  # constant pieces of every round
            ("user_tail", "<|im_end|>\n"), ("assistant_head", "<|im_start|>assistant\n"),
            ("silent", "\n" + MARK), ("tail", "<|im_end|>\n"))}
        self.inv_freq = self.model.model.language_model.rotary_emb.inv_freq
        evicting = self.settings.policy in ("streamingvlm", "recompute")
        self.decoder = StreamDecoder(self.model, decode, min_cache_len=self.settled_cache_len() if evicting else 0)
        self._banned: torch.Tensor | None = None
        if warmup:
            self.warmup()
        if self.model.model.language_model.rotary_emb.attention_scaling != 1.0:
            raise ValueError("StreamingVLM delta rotations need RoPE without attention scaling (rope_type default)")

    def settled_cache_len(self) -> int:
        """An upper estimate of the tokens an evicting policy's cache settles at, plus one turn's speech.

        Vision rounds at the largest frame, text rounds with a full turn and their markup, the full previous-text
        block and the system turn.
        """
        s = self.settings
        vision = s.max_pixels // (self.model.config.vision_config.patch_size * self.merge) ** 2 + 2
        markup = 32  # "<|im_start|>user\nTime=...s", the turn ends and " ..."
        system = len(self._encode(s.system_prompt)) + markup
        return (s.vision_window * vision + s.text_rounds * (s.max_new_tokens + markup) + s.text_sink
                + s.text_window + system + s.max_new_tokens)

    def warmup(self) -> None:
        """Compile the decode step now (compiled mode only): a few tokens after the system turn, then forgotten."""
        if self.decoder.mode != "compiled":
            return
        state = self.init_state()
        logits = self._prefill(state, {})
        self.decoder.warmup(state.cache, logits, state.layout.next_position)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # --- state ----------------------------------------------------------------------------------------------
    def init_state(self) -> StreamingVLMState:
        """An empty stream: system turn and previous text (not prefilled yet), an empty cache."""
        s = self.settings
        evicting = s.policy in ("streamingvlm", "recompute")
        layout = CacheLayout(
            text_block("system", self._encode(f"<|im_start|>system\n{s.system_prompt}<|im_end|>\n")),
            text_block("prev_head", self._encode("<|im_start|>previous text\n")),
            text_block("prev_tail", self._encode("<|im_end|>\n")),
            torch.tensor(self._encode(self.previous_text), dtype=torch.long),
            text_sink=s.text_sink if evicting else None, text_window=s.text_window if evicting else None,
            vision_window=s.vision_window if evicting else None, text_rounds=s.text_rounds if evicting else None,
        )
        return StreamingVLMState(layout, DynamicCache(config=self.model.config.text_config))

    def ingest(self, state: StreamingVLMState, frames: np.ndarray, times: np.ndarray) -> None:
        """Process ``(k * frames_per_step, H, W, 3)`` frames: one round (and its commentary) per chunk."""
        if len(frames) % self.frames_per_step:
            raise ValueError(f"StreamingVLM takes chunks of {self.frames_per_step} frames; got {len(frames)}")
        for i in range(0, len(frames), self.frames_per_step):
            self.step(state, frames[i: i + self.frames_per_step], times[i: i + self.frames_per_step])

    # --- one chunk ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, state: StreamingVLMState, frames: np.ndarray, times,
             clock: Callable[[str], None] | None = None) -> Commentary:
        """One round: evict, encode the chunk, prefill its user turn, speak; returns its commentary.

        ``clock(phase)``, when given, is called after each phase ("evict", "vision", "prefill", "speak"); the
        benchmark times the phases with it.
        """
        s = self.settings
        tick = clock or (lambda phase: None)
        start = math.floor(float(times[0]) / s.chunk_seconds + 1e-9) * s.chunk_seconds
        start = start if state.last_end is None else max(start, state.last_end)
        end = start + s.chunk_seconds
        if state.window_start is None:
            state.window_start = start
        if s.policy == "sliding" and start - state.window_start >= s.restart_seconds - 1e-9:
            fresh = self.init_state()
            state.layout, state.cache, state.window_start = fresh.layout, fresh.cache, start
        first = state.window_start == start
        index = state.rounds
        state.layout.evict(index)
        if s.policy == "recompute":
            self._forget_cache(state)
        else:
            reposition(state.cache, state.layout, self.inv_freq)
        tick("evict")
        pixels, grid = self.processor(frames)
        vision = encode_video(self.model, pixels, grid)  # (m, h): the ViT sees the new frames only
        tick("vision")
        t, h, w = (int(x) for x in grid[0])
        round_ = self.new_round(index, start, end, (t, h // self.merge, w // self.merge), first=first,
                                vision=vision if s.policy == "recompute" else None)
        body = round_.parts["assistant_body"]
        state.layout.rounds.append(round_)
        state.layout.place()
        logits = self._prefill(state, {id(round_.parts["vision"]): vision})
        tick("prefill")
        if self.speak:
            self._speak(state, body, logits)
        tick("speak")
        self._close_round(state.layout, round_)
        state.rounds, state.last_end = index + 1, end
        state.max_position_seen = max(state.max_position_seen, state.layout.max_position())
        text = self.tokenizer.decode(body.ids.tolist(), skip_special_tokens=True)
        said = Commentary(start, end, text.strip())
        state.commentary.append(said)
        if self.on_commentary is not None:
            self.on_commentary(said)
        return said

    def new_round(self, index: int, start: float, end: float, grid: tuple[int, int, int], *, first: bool,
                  vision: torch.Tensor | None = None) -> Round:
        """The records of a new round, without a model call.

        The user turn holds vision of LLM grid ``(t, h, w)``; the assistant turn a header and an empty body (the
        silent turn when not speaking).
        """
        s, config = self.settings, self.model.config
        round_ = Round(index, start, end)
        round_.parts["user_head"] = text_block("user_head", self._encode(
            f"<|im_start|>user\nTime={start:.1f}-{end:.1f}s"))
        round_.parts["vision"] = vision_block(config.vision_start_token_id, config.video_token_id,
                                              config.vision_end_token_id, grid, self.temporal_scale, vision=vision)
        query = self._encode(s.query) if first and s.query else []
        round_.parts["user_tail"] = text_block("user_tail", query + self.markup["user_tail"])
        round_.parts["assistant_head"] = text_block("assistant_head", self.markup["assistant_head"])
        round_.parts["assistant_body"] = text_block("assistant_body", [] if self.speak else self.markup["silent"])
        return round_

    def _forget_cache(self, state: StreamingVLMState) -> None:
        """"recompute": drop every key and value; the retained blocks are prefilled again at their new offsets."""
        state.cache = DynamicCache(config=self.model.config.text_config)
        for block in state.layout.blocks():
            block.runs = []

    def _prefill(self, state: StreamingVLMState, fresh_vision: dict[int, torch.Tensor]) -> torch.Tensor:
        """Prefill every pending block (with its vision tokens); returns the last token's logits ``(1, V)``."""
        pending = state.layout.pending()
        ids, positions = pending_inputs(pending)
        vision = [fresh_vision.get(id(b), b.vision) for b in pending if b.kind == "vision"]
        vision = torch.cat(vision) if vision else None
        slot = state.layout.cached_length()
        logits = forward_embeds(self.model, state.cache, ids, positions, vision)
        mark_prefilled(pending, slot)
        return logits

    def _speak(self, state: StreamingVLMState, body, logits: torch.Tensor) -> None:
        """Up to ``max_new_tokens`` tokens into ``body`` (each fed at once), stopping at ``<|im_end|>``."""
        retained = [state.layout.ids().to(logits.device)]

        def choose(scores: torch.Tensor) -> torch.Tensor:
            token = self.next_token(scores, torch.cat(retained))
            retained.append(token)
            return token

        slot, position = state.layout.cached_length(), body.offset + body.length
        tokens = self.decoder.decode(state.cache, logits, position, self.settings.max_new_tokens, choose,
                                     self.ids["im_end"], keep=True, check_every=SPEAK_CHECK_EVERY)
        spoken = [t for t in tokens if t != self.ids["im_end"]]
        if spoken:
            body.ids = torch.cat([body.ids, torch.tensor(spoken)])
            body.runs = _merged(body.runs + [Run(slot, len(spoken), position)])

    def _close_round(self, layout: CacheLayout, round_: Round) -> None:
        """Split the trailing " ..." off the body (it never moves into the previous text); queue the turn's end."""
        body = round_.parts["assistant_body"]
        n = len(self.mark_ids)
        if body.length >= n and body.ids[-n:].tolist() == self.mark_ids:  # else the whole turn is commentary
            mark_ids = body.ids[-n:]
            keep = body.length - n
            head, tail = split_runs(body.runs, keep)
            body.ids, body.runs = body.ids[:keep], head
            round_.parts["assistant_mark"] = text_block("assistant_mark", mark_ids)
            round_.parts["assistant_mark"].runs = tail
        round_.parts["assistant_tail"] = text_block("assistant_tail", self.markup["tail"])
        self._reorder(round_)
        layout.place()  # the new mark and tail blocks take their positions

    @staticmethod
    def _reorder(round_: Round) -> None:
        round_.parts = {name: round_.parts[name] for name in ROUND_PARTS if name in round_.parts}

    def next_token(self, logits: torch.Tensor, retained: torch.Tensor, *, do_sample: bool | None = None
                   ) -> torch.Tensor:
        """The next token, ``(1,)`` on the logits' device: repetition penalty over ``retained``, then sampling.

        Nothing here waits for the device. Vision placeholders (``<|video_pad|>``, ``<|image_pad|>``) are never
        generated.
        """
        s = self.settings
        scores = logits.float().clone()
        if self._banned is None or self._banned.device != scores.device:
            self._banned = torch.tensor(self.banned, device=scores.device)
        scores.index_fill_(-1, self._banned, -torch.inf)  # a generated placeholder would have no vision token
        if s.repetition_penalty != 1.0:
            penalty = RepetitionPenaltyLogitsProcessor(s.repetition_penalty)
            scores = penalty(retained.to(scores.device)[None], scores)
        if not (s.do_sample if do_sample is None else do_sample):
            return scores.argmax(-1)
        probs = torch.softmax(scores / s.temperature, dim=-1)
        if self.generator is not None and self.generator.device != probs.device:
            self.generator = torch.Generator(probs.device).manual_seed(self.seed)
        return torch.multinomial(probs, 1, generator=self.generator)[0]

    # --- questions (StreamSession.ask) ----------------------------------------------------------------------
    def snapshot(self, state: StreamingVLMState) -> Snapshot:
        """The state itself: the cache is the memory (questions run under the session's model lock)."""
        return Snapshot(state, state.num_vision_tokens)

    def prompt(self, snapshot: Snapshot, question: str, assistant_prefix: str = "") -> Prompt:
        text = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{assistant_prefix}"
        return Prompt(torch.tensor([self._encode(text)]), 0, {})

    def prefill(self, snapshot: Snapshot, prompt: Prompt) -> DynamicCache:
        """Nothing to prefill: the stream's cache already holds everything before the question."""
        return snapshot.visual.cache

    @torch.inference_mode()
    def generate(self, snapshot: Snapshot, prompt: Prompt, prefix, *, max_new_tokens: int = 64, streamer=None,
                 do_sample: bool = False, **_generation) -> torch.Tensor:
        """``(1, new)`` answer tokens; the question and answer are cut off the cache afterwards."""
        state = snapshot.visual
        cache, layout = state.cache, state.layout
        kept = layout.cached_length()
        pending_ids, pending_positions = pending_inputs(layout.pending())
        question = prompt.input_ids[0]
        start = layout.next_position
        ids = torch.cat([pending_ids, question])
        positions = torch.cat([pending_positions, (torch.arange(len(question)) + start).expand(3, -1)], dim=1)
        if streamer is not None:
            streamer.put(question[None])
        retained = [torch.cat([layout.ids(), question]).to(self.model.device)]

        def choose(scores: torch.Tensor) -> torch.Tensor:
            token = self.next_token(scores, torch.cat(retained), do_sample=do_sample)
            retained.append(token)
            return token

        def stream(tokens: list[int]) -> None:
            if streamer is not None:
                streamer.put(torch.tensor(tokens))

        try:
            logits = forward_embeds(self.model, cache, ids, positions)
            new = self.decoder.decode(cache, logits, start + len(question), max_new_tokens, choose,
                                      self.ids["im_end"], keep=False, on_tokens=stream)
        finally:
            crop_cache(cache, kept)  # the stream's cache exactly as before the question
            if streamer is not None:
                streamer.end()
        return torch.tensor([new], dtype=torch.long)


def _merged(runs: list[Run]) -> list[Run]:
    """Adjacent runs of consecutive slots and positions as one."""
    out: list[Run] = []
    for run in runs:
        if out and out[-1].slot + out[-1].length == run.slot and out[-1].base + out[-1].length == run.base:
            out[-1] = Run(out[-1].slot, out[-1].length + run.length, out[-1].base)
        else:
            out.append(run)
    return out


def commentate(vs, frames: Iterable[tuple[np.ndarray, float]], *, previous_text: str = "",
               query: str | None = None, settings: StreamingVLMSettings | None = None, seed: int | None = None,
               **overrides) -> Iterator[Commentary]:
    """Live commentary over a stream of frames: one :class:`Commentary` per chunk, as soon as it is spoken.

    Args:
        vs: a loaded StreamingVLM-family ``FlashVStream``.
        frames: ``(frame (H, W, 3) uint8, seconds)`` pairs at the settings' fps (2), e.g. a
            ``VideoFileSource(path, speed=None, fps=2)``; consecutive groups of ``frames_per_chunk`` frames make
            a chunk (a last, partial chunk is padded with its last frame).
        previous_text: starting text of the previous-text block (title, background, earlier commentary).
        query: the instruction after the first chunk's video (default: the settings', "Commentate on this match").
        settings: streaming settings (default: the model's).
        seed: sampling seed.
        **overrides: :class:`~flash_vstream.model.streamingvlm.StreamingVLMSettings` fields, e.g.
            ``do_sample=False`` or ``policy="full"``.

    Yields:
        :class:`Commentary` ``(start, end, text)``; ``text`` is "" for a silent second.
    """
    settings = settings or settings_of(vs.model)
    if query is not None:
        overrides["query"] = query
    settings = settings.replace(**overrides) if overrides else settings
    backend = StreamingVLMSessionBackend(vs, settings, previous_text=previous_text, seed=seed)
    state = backend.init_state()
    step = backend.frames_per_step
    chunk, times = [], []
    for frame, seconds in frames:
        chunk.append(np.asarray(frame))
        times.append(float(seconds))
        if len(chunk) == step:
            yield backend.step(state, np.stack(chunk), np.array(times))
            chunk, times = [], []
    if chunk:
        chunk += [chunk[-1]] * (step - len(chunk))
        times += [times[-1]] * (step - len(times))
        yield backend.step(state, np.stack(chunk), np.array(times))


class StreamingVLMInputBuilder:
    """Offline ``FlashVStream.answer`` inputs: the whole clip as plain Qwen2.5-VL video tokens, then the question.

    Frames are resized by the streaming settings' pixel budget; one video block of ``t`` temporal patches.
    """

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings_of(model)
        vision = model.config.vision_config
        self.frame_processor = FlashFrameProcessor(
            max_pixels=self.settings.max_pixels, min_pixels=self.settings.min_pixels, patch_size=vision.patch_size,
            merge_size=vision.spatial_merge_size, temporal_patch_size=vision.temporal_patch_size, pool_size=1)
        self.merge, self.temporal = vision.spatial_merge_size, vision.temporal_patch_size

    @classmethod
    def for_model(cls, model, tokenizer) -> StreamingVLMInputBuilder:
        return cls(model, tokenizer)

    def __call__(self, question: str, *, frames=None, features=None, assistant_prefix: str = "") -> dict:
        if features is not None or frames is None:
            raise ValueError("the StreamingVLM family needs frames= (uint8 (T, H, W, 3)); features are unused")
        pixels, grid = self.frame_processor(np.asarray(frames))
        count = int(grid.prod()) // self.merge**2
        video = "<|vision_start|>" + "<|video_pad|>" * count + "<|vision_end|>"
        messages = [{"role": "user", "content": video + question}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([self.tokenizer(text + assistant_prefix, add_special_tokens=False)["input_ids"]])
        types = (ids == self.model.config.video_token_id).long() * VIDEO_TOKEN_TYPE
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types,
                "pixel_values_videos": pixels, "video_grid_thw": grid,
                "second_per_grid_ts": torch.tensor([self.temporal / self.settings.fps])}

    def max_visual_tokens(self) -> int:
        """Vision tokens of one chunk at the largest frame (the offline path's static cache adds text room)."""
        return self.settings.max_pixels // (self.frame_processor.patch_size * self.merge) ** 2

    def read_video(self, video, sampler, *, progress: bool = False) -> dict:
        from flash_vstream.video import read_video

        return {"frames": read_video(video, sampler=sampler, progress=progress).frames}

    def count_visual_tokens(self, inputs: dict) -> int:
        return int((inputs["mm_token_type_ids"] == VIDEO_TOKEN_TYPE).sum())
