"""Token-by-token decoding on top of a StreamingVLM stream's cache: eager, or a static cache with a compiled step.

A stream's cache is a transformers ``DynamicCache`` that follows the segment records (eviction gathers it, new
rounds are prefilled onto it). Decoding the commentary (up to 20 tokens a second) or an answer one token at a time
on it eagerly costs one forward of the whole decoder per token, dominated at batch 1 by hundreds of small kernel
launches and by the cache's growth (every token concatenates to every layer's keys and values).

:class:`StreamDecoder` decodes the way transformers' ``generate`` does when compiled: the retained keys and values
are copied once into a transformers :class:`~transformers.StaticCache` (one buffer, reused by every round), each
step is the model's own forward through ``model.get_compiled_call`` (``torch.compile`` with CUDA graphs,
``mode="reduce-overhead"``), and the new tokens' keys and values are appended to the stream's cache once, at the
end. Positions are the stream's own (M-RoPE, text ``(p, p, p)``): the static cache only lends slots.

Modes (those of :mod:`flash_vstream.inference.decode`): ``"eager"`` (forward on the ``DynamicCache`` itself),
``"static"`` (the static cache, not compiled; on a CPU it must give the eager tokens), ``"compiled"``, and
``"auto"`` (compiled on CUDA, eager elsewhere).

The static cache is sized for the retained cache plus the tokens to decode, rounded up to
:data:`CACHE_ROUNDING`; a longer cache later (the "full" policy's grows without bound) replaces it by one of twice
the size, and one needing a quarter of it or less (a restarted "sliding" cache) by a fitted one; each new size
compiles the step once more (counted in :attr:`StreamDecoder.compiles`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from transformers import CompileConfig, DynamicCache, StaticCache

from flash_vstream.inference.decode import resolve_mode

__all__ = ["CACHE_ROUNDING", "StreamDecoder", "crop_cache"]

logger = logging.getLogger(__name__)

CACHE_ROUNDING = 4096
"""Static cache lengths are multiples of this, so a stream's slowly varying cache length keeps one compiled size."""
SHRINK_BELOW = 4
"""A cache needing a quarter of the static buffer or less gets a smaller one (every step attends over the whole
buffer, masked: a restarted "sliding" cache would otherwise pay for its longest past)."""


class StreamDecoder:
    """Decodes tokens after a stream's ``DynamicCache`` (see the module docstring).

    Args:
        model: the Qwen2.5-VL model (``Qwen2_5_VLForConditionalGeneration``).
        mode: ``"auto"``, ``"eager"``, ``"static"`` or ``"compiled"``.
        compile_config: how the compiled mode compiles (default: transformers' ``CompileConfig()``).
        min_cache_len: the static cache is never smaller (the length a stream's cache settles at, so the step is
            compiled for one size while the windows fill).

    Raises:
        ValueError: for an unknown mode.
    """

    def __init__(self, model, mode: str = "auto", *, compile_config: CompileConfig | None = None,
                 min_cache_len: int = 0):
        self.model = model
        self.min_cache_len = min_cache_len
        self.mode = resolve_mode(mode, model.device)
        self.compile_config = compile_config if compile_config is not None else CompileConfig()
        self.compiles = 0
        """Static cache sizes the compiled step has been compiled for."""
        self._static: StaticCache | None = None
        self.max_cache_len = 0
        """Slots of the current static cache (0 before the first static decode)."""

    @torch.inference_mode()
    def decode(self, cache: DynamicCache, logits: torch.Tensor, position: int, max_new_tokens: int,
               choose: Callable[[torch.Tensor], torch.Tensor], stop_id: int, *, keep: bool, check_every: int = 1,
               on_tokens: Callable[[list[int]], None] | None = None) -> list[int]:
        """Tokens chosen one at a time after ``cache``, each fed back before the next is chosen.

        The chosen tokens stay on the model's device; the host reads them (a device synchronisation) every
        ``check_every`` tokens to look for ``stop_id``. Between two reads the GPU never waits for the host, at the
        price of up to ``check_every - 1`` tokens decoded past a stop and then discarded (their keys and values
        never reach ``cache``).

        Args:
            cache: the stream's cache; every token it holds precedes the new ones.
            logits: ``(1, V)`` logits of the last token in ``cache`` (from its prefill).
            position: the first new token's position (all three M-RoPE components).
            max_new_tokens: most tokens chosen.
            choose: ``(1, V)`` logits -> the next token, a ``(1,)`` long tensor on the logits' device.
            stop_id: the token that ends decoding; it is returned but not kept in ``cache``.
            keep: whether the chosen tokens' keys and values stay in ``cache`` (commentary) or not (a question's
                answer); ``cache`` is otherwise exactly as it was.
            check_every: tokens between two host reads (1: read every token, e.g. to stream an answer live).
            on_tokens: called with each batch of tokens as the host reads them (stop token included).

        Returns:
            The chosen ids, ``stop_id`` last when it was chosen.

        Raises:
            ValueError: when ``check_every`` is below 1.
        """
        if check_every < 1:
            raise ValueError(f"check_every must be at least 1, got {check_every}")
        kept = cache.get_seq_length()
        if max_new_tokens < 1:
            return []
        static = None if self.mode == "eager" else self._static_cache(cache, kept + max_new_tokens)
        target = static if static is not None else cache
        step = self._step_fn()
        positions = torch.arange(position, position + max_new_tokens, device=logits.device)  # one copy per call
        positions = positions.view(-1, 1, 1, 1).repeat(1, 3, 1, 1)  # (n, 3, 1, 1): step k feeds positions[k]
        tokens: list[int] = []
        unread: list[torch.Tensor] = []
        for k in range(max_new_tokens):
            token = choose(logits)
            unread.append(token)
            last = k + 1 == max_new_tokens
            if len(unread) == check_every or last:
                values = torch.cat(unread).tolist()
                unread = []
                if on_tokens is not None:
                    on_tokens(values[: values.index(stop_id) + 1] if stop_id in values else values)
                if stop_id in values:
                    tokens += values[: values.index(stop_id) + 1]
                    break
                tokens += values
            if last and not keep:
                break  # an answer's last token needs no forward
            logits = step(token, positions[k], target)
        spoken = len(tokens) - (bool(tokens) and tokens[-1] == stop_id)
        self._settle(cache, static, kept, spoken if keep else 0)
        return tokens

    def _settle(self, cache: DynamicCache, static: StaticCache | None, kept: int, keep: int) -> None:
        """Leave ``cache`` with its first ``kept`` tokens plus the first ``keep`` decoded ones."""
        if static is not None:
            if keep:
                for source, target in zip(static.layers, cache.layers, strict=True):
                    target.update(source.keys[:, :, kept: kept + keep], source.values[:, :, kept: kept + keep])
            return
        crop_cache(cache, kept + keep)  # eager: tokens decoded past a stop, or an answer's, were fed into it

    def warmup(self, cache: DynamicCache, logits: torch.Tensor, position: int, tokens: int = 3) -> None:
        """Compile and capture the step now (compiled mode only).

        Decodes ``tokens`` greedy tokens after ``cache``, which is left as it was.
        """
        if self.mode == "compiled":
            self.decode(cache, logits, position, tokens, lambda scores: scores.argmax(-1), -1, keep=False)

    # --- internals --------------------------------------------------------------------------------------------

    def _step_fn(self) -> Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]:
        model = self.model
        forward = model.get_compiled_call(self.compile_config) if self.mode == "compiled" else model.__call__

        def step(token: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
            """Feed one token (``(1,)`` on the device) at M-RoPE ``position`` (``(3, 1, 1)``); its ``(1, V)`` logits."""
            out = forward(input_ids=token.view(1, 1), position_ids=position, cache=cache, use_cache=True,
                          logits_to_keep=1)
            return out.logits[:, -1].float()  # a copy: a CUDA graph's output is overwritten by its next replay

        return step

    def _static_cache(self, cache: DynamicCache, needed: int) -> StaticCache:
        """The decoder's static cache holding ``cache``'s keys and values in its first slots."""
        fitted = -(-max(needed, self.min_cache_len) // CACHE_ROUNDING) * CACHE_ROUNDING
        too_big = self._static is not None and fitted * SHRINK_BELOW <= self.max_cache_len
        if self._static is None or needed > self.max_cache_len or too_big:
            size = fitted if self._static is None or too_big else max(fitted, 2 * self.max_cache_len)
            if self._static is not None:
                logger.info("StreamingVLM decode: the static cache becomes %d slots%s", size,
                            " (the decode step compiles again)" if self.mode == "compiled" else "")
            self._static = None  # free the old buffer before the new one is allocated
            self._static = StaticCache(config=self.model.config.get_text_config(decoder=True), max_cache_len=size)
            self.max_cache_len = size
            self.compiles += self.mode == "compiled"
        else:
            self._static.reset()
        if len(cache.layers) != len(self._static.layers):
            raise ValueError(f"the stream's cache has {len(cache.layers)} layers, the model {len(self._static.layers)}")
        for source, target in zip(cache.layers, self._static.layers, strict=True):
            if source.keys is not None and source.keys.shape[-2]:
                target.update(source.keys, source.values)  # writes slots [0, L) and sets the layer's length
        return self._static


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` tokens of every layer of ``cache`` (views: nothing is copied)."""
    for layer in cache.layers:
        if layer.keys is not None:
            layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]
