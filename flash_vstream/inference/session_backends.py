"""Session backends: what a :class:`~flash_vstream.inference.streaming.StreamSession` needs from a model family.

A backend turns frames into memory updates and a memory read-out into answers, for one family:

- ``frames_per_step``: frames one memory step consumes (STAR: 1 frame; Flash: a temporal patch of 2 frames);
- ``init_state()``: an empty memory state (the memory's own typed state);
- ``ingest(state, frames, times)``: preprocess, encode and fold ``frames`` into ``state`` (in place);
- ``snapshot(state)``: read the memory and project it for the decoder (a :class:`Snapshot`, independent of
  later updates);
- ``prompt(snapshot, question, assistant_prefix)``: the full prompt of a question (a :class:`Prompt`), with the
  length of its cacheable head;
- ``prefill(snapshot, prompt)``: the KV cache of that head;
- ``generate(snapshot, prompt, prefix, **generation)``: the new tokens, from the cached head (``prefix``, the
  kept cache of the head, never modified) or from a full prefill (``prefix=None``).

Both families follow the offline ``FlashVStream.answer`` path exactly: the same frame preprocessing, the same
prompt builders, the same ``generate`` entry point and the model's own decoder (``FlashVStream.decoder``: a
static cache with a compiled decode step on CUDA, which copies the prefix into its cache), with the memory's
streaming ``update``/``read`` in place of ``compress``; so a short stream (within the memory's
``exact_streaming_frames``) answers like ``answer()`` on the same frames.

The backend of a loaded model is chosen by :func:`session_backend` from ``FlashVStream.family``.

Shapes: L prompt tokens, s cached head tokens, m visual tokens, h decoder width.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from flash_vstream.inference.kv import prefix_length
from flash_vstream.inference.prompts import build_star_inputs
from flash_vstream.memory.base import MemoryState
from flash_vstream.model.splice import embed_with_visual_tokens

__all__ = ["FlashSessionBackend", "Prompt", "Snapshot", "StarSessionBackend", "session_backend"]

VIDEO_TOKEN_TYPE = 2  # mm_token_type_ids of a <|video_pad|> token


@dataclass(frozen=True)
class Snapshot:
    """A memory read-out ready for the decoder, independent of the state it came from.

    Attributes:
        visual: STAR: ``(m, h)`` projected memory tokens; Flash: the model's encoded video (merger output plus
            the AM-RoPE layout).
        num_visual_tokens: decoder tokens the prompt must hold for it.
    """

    visual: Any
    num_visual_tokens: int


@dataclass(frozen=True)
class Prompt:
    """One question's full prompt.

    Attributes:
        input_ids: ``(1, L)`` token ids, visual placeholders included.
        head: ``s``, the tokens of the cacheable head (:func:`~flash_vstream.inference.kv.prefix_length`).
        inputs: the family's further ``generate`` inputs for the whole prompt (STAR: ``inputs_embeds``; Flash:
            ``mm_token_type_ids`` and ``position_ids``).
    """

    input_ids: torch.Tensor
    head: int
    inputs: dict

    @property
    def head_ids(self) -> tuple[int, ...]:
        return tuple(self.input_ids[0, : self.head].tolist())


def _frames_times(times: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(times, dtype=np.float32))


def _generate(vs, target, prefix: DynamicCache | None, **kwargs):
    """``target.generate(**kwargs)`` through the model's decoder, starting from ``prefix`` (left unmodified)."""
    decoder = getattr(vs, "decoder", None)
    if decoder is not None:
        return decoder.generate(target, prefix=prefix, **kwargs)
    if prefix is not None:  # a FlashVStream without a decoder: transformers' generate on a copy of the prefix
        kwargs["cache"] = copy.deepcopy(prefix)
    return target.generate(**kwargs)


class StarSessionBackend:
    """STAR family: CLIP per frame -> ``StarMemory.update``; read -> projector -> spliced prompt embeddings.

    Args:
        vs: a loaded STAR-family ``FlashVStream``.
    """

    frames_per_step = 1

    def __init__(self, vs):
        self.vs, self.model, self.tokenizer = vs, vs.model, vs.tokenizer
        self.processor = vs.input_builder.processor
        self.config = vs.model.config

    def init_state(self) -> MemoryState:
        return self.model.memory.init_state()

    def ingest(self, state: MemoryState, frames: np.ndarray, times: np.ndarray) -> None:
        """Encode ``(t, H, W, 3)`` frames with CLIP and fold them in, with their stream times (seconds)."""
        features = self.model.encode_frames(self.processor(frames))  # (t, n, d)
        self.model.memory.update(state, features, _frames_times(times))

    def snapshot(self, state: MemoryState) -> Snapshot:
        out = self.model.memory.read(state)
        return Snapshot(self.model.project_memory(out), out.num_tokens)  # (m, h)

    def prompt(self, snapshot: Snapshot, question: str, assistant_prefix: str = "") -> Prompt:
        cfg = self.config
        ids = build_star_inputs(
            self.tokenizer, cfg.conv_template, question, snapshot.num_visual_tokens, cfg.image_token_id,
            assistant_prefix=assistant_prefix,
        )["input_ids"].to(snapshot.visual.device)
        embeds = embed_with_visual_tokens(self.model.get_input_embeddings(), ids, cfg.image_token_id, snapshot.visual)
        return Prompt(ids, prefix_length(ids[0] == cfg.image_token_id), {"inputs_embeds": embeds})  # (1, L, h)

    def prefill(self, snapshot: Snapshot, prompt: Prompt) -> DynamicCache:
        lm = self.model.language_model
        cache = DynamicCache(config=lm.config)
        head = prompt.inputs["inputs_embeds"][:, : prompt.head]  # (1, s, h)
        mask = torch.ones(head.shape[:2], dtype=torch.long, device=head.device)
        lm(inputs_embeds=head, attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    def generate(self, snapshot: Snapshot, prompt: Prompt, prefix: DynamicCache | None, **generation) -> torch.Tensor:
        """``(1, new)`` new tokens; ``generate`` prefills only what ``prefix`` does not hold."""
        embeds = prompt.inputs["inputs_embeds"]
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        # Embeddings only: generate returns just the new tokens, exactly as FlashVStreamForCausalLM.generate.
        return _generate(self.vs, self.model.language_model, prefix, inputs_embeds=embeds, attention_mask=mask,
                         **generation)


class FlashSessionBackend:
    """Flash family: frames pair into temporal patches -> dual-resolution ViT -> ``FlashMemory.update``.

    A read goes through the tower's merger (``embed_memory``) and its AM-RoPE layout places the prompt's ids;
    the memory's time axis counts the temporal patches folded in (0, 1, 2, ...), as the offline path numbers a
    clip's patches, whatever the stream times.

    Args:
        vs: a loaded Flash-family ``FlashVStream``.
    """

    def __init__(self, vs):
        self.vs, self.model, self.tokenizer, self.builder = vs, vs.model, vs.tokenizer, vs.input_builder
        self.frames_per_step = int(vs.model.config.vision_config.temporal_patch_size)
        self.video_token_id = vs.model.config.video_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def init_state(self) -> MemoryState:
        return self.model.flash_memory.init_state()

    def ingest(self, state: MemoryState, frames: np.ndarray, times: np.ndarray) -> None:
        """Encode ``(2k, H, W, 3)`` frames (k temporal patches) and fold them in."""
        if len(frames) % self.frames_per_step:
            raise ValueError(f"the Flash family folds frames in pairs; got {len(frames)} frames")
        pixels, grid = self.builder.frame_processor(frames)
        features = self.model.dual_resolution_features(pixels.to(self.device), grid.to(self.device))[0]
        self.model.flash_memory.update(state, features)

    def snapshot(self, state: MemoryState) -> Snapshot:
        out = self.model.flash_memory.read(state)
        return Snapshot(self.model.embed_memory([out]), self.model.flash_memory.decoder_tokens(out))

    def prompt(self, snapshot: Snapshot, question: str, assistant_prefix: str = "") -> Prompt:
        text = self.builder.prompt(question, snapshot.num_visual_tokens, assistant_prefix)
        ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]], device=self.device)
        is_video = ids == self.video_token_id
        if int(is_video.sum()) != snapshot.num_visual_tokens:
            raise ValueError(
                f"the tokenized prompt holds {int(is_video.sum())} video tokens, expected "
                f"{snapshot.num_visual_tokens}; the tokenizer must keep <|video_pad|> as one special token"
            )
        types = is_video.long() * VIDEO_TOKEN_TYPE
        mask = torch.ones_like(ids)
        positions, _ = self.model.flash_position_ids(ids, types, mask, snapshot.visual)  # (3, 1, L)
        return Prompt(ids, prefix_length(is_video[0]), {"mm_token_type_ids": types, "position_ids": positions})

    def prefill(self, snapshot: Snapshot, prompt: Prompt) -> DynamicCache:
        s = prompt.head
        cache = DynamicCache(config=self.model.config.text_config)
        ids = prompt.input_ids[:, :s]
        self.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=prompt.inputs["mm_token_type_ids"][:, :s],
            position_ids=prompt.inputs["position_ids"][..., :s],
            mm_encoder_outputs={"video": snapshot.visual},
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return cache

    def generate(self, snapshot: Snapshot, prompt: Prompt, prefix: DynamicCache | None, **generation) -> torch.Tensor:
        """``(1, new)`` new tokens, from the cached head (the video lives in ``prefix``) or a full prefill."""
        ids = prompt.input_ids
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": prompt.inputs["mm_token_type_ids"]}
        if prefix is None:  # the offline path: the model places the AM-RoPE ids itself
            inputs["mm_encoder_outputs"] = {"video": snapshot.visual}
        else:  # the video is in the prefix; its ids continue from the full prompt's
            inputs["position_ids"] = prompt.inputs["position_ids"]
        output = _generate(self.vs, self.model, prefix, **inputs, **generation)
        return output[:, ids.shape[1]:]


def session_backend(vs):
    """The session backend of a loaded model: its family's ``session_backend`` record in the family registry.

    Raises:
        ValueError: when the model's family is unknown or has no session backend.
    """
    from flash_vstream.families import get_family

    if vs.family is None:
        raise ValueError("this FlashVStream has no family; load the model with flash_vstream.load_model")
    family = get_family(vs.family)
    if family.session_backend is None:
        raise ValueError(f"model family {vs.family!r} has no streaming backend")
    return family.resolve("session_backend")(vs)
