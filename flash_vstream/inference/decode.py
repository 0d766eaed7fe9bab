"""Fast answer decoding: transformers' static KV cache, with the decode step compiled once per session.

Answers decode one token at a time, and at batch 1 each step of a 7B decoder is a few milliseconds of GPU work
(reading the bf16 weights once) buried under hundreds of small kernel launches when run eagerly. A
:class:`Decoder` removes the launches the way transformers intends: a :class:`~transformers.StaticCache` of a
fixed size (so every decode step has the same shapes), and ``generate``'s own ``torch.compile`` of the model's
forward with ``mode="reduce-overhead"``, which replays the whole decode step as one CUDA graph. Nothing here
writes a cache or a decode loop: sampling, stopping criteria and logits processors are ``generate``'s.

Modes (:data:`DECODE_MODES`):

- ``"eager"``: ``generate`` as transformers runs it by default (a growing ``DynamicCache``, no compilation);
- ``"static"``: the session's static cache, no compilation (the reference the compiled mode must equal; it is
  what runs on a CPU when asked for, since compiling brings nothing there);
- ``"compiled"``: the static cache plus the compiled decode step (CUDA graphs on a GPU);
- ``"auto"`` (the default): ``"compiled"`` on CUDA, ``"eager"`` elsewhere.

The static cache is allocated once, for ``max_cache_len`` positions, and reused by every answer (``reset``
between them), so its tensors keep their addresses and the compiled step is traced, compiled and captured once
(:meth:`Decoder.warmup`, which ``FlashVStream.set_decoder`` runs at load, outside any answer; its cost is
``compile_seconds``). A prompt plus answer longer than the cache grows it (a new size recompiles; counted in
``compiles`` and logged). Each step attends over the whole cache (masked), so a cache much longer than the
prompts costs a little time per token: size it to the longest prompt plus answer you expect.

Calls are serialised (one static cache per decoder). ``torch.compile``'s CUDA graphs are kept per thread, so an
answer from a thread other than the warm-up's may record its graphs once more (a capture, not a recompilation).

A **prefix** (the key/value cache of a prompt head, e.g. the memory prefix cache of a stream, a transformers
:class:`~transformers.DynamicCache`) can start any answer: pass it as ``prefix=`` with the *full* prompt;
``generate`` then prefills only the tokens the prefix does not hold. The prefix is never modified (the static
modes copy it into the session cache; the eager mode generates on a copy), so one prefix serves any number of
answers. With greedy decoding at fp32 every mode gives the same tokens, with or without a prefix (tested for
both families).

>>> decoder = Decoder.for_model(model)                                                    # doctest: +SKIP
>>> decoder.generate(model.language_model, inputs_embeds=embeds, max_new_tokens=32)       # doctest: +SKIP
>>> decoder.generate(model.language_model, inputs_embeds=embeds, prefix=head_cache, max_new_tokens=32)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import CompileConfig, StaticCache
from transformers.cache_utils import Cache

__all__ = ["DECODE_MODES", "DEFAULT_MAX_CACHE_LEN", "Decoder", "cache_len_for", "resolve_mode"]

logger = logging.getLogger(__name__)

DECODE_MODES = ("auto", "eager", "static", "compiled")

DEFAULT_MAX_CACHE_LEN = 16384
"""Longest static cache made by default (positions): above the longest Flash-family prompt (11,520 visual tokens
plus text) with room for the answer. The decoder's ``max_position_embeddings`` caps it (4,096 for Vicuna)."""

_CACHE_ROUNDING = 256  # a grown cache is rounded up to this, so near-equal prompts share one compiled size

TEXT_BUDGET = 1024
"""Prompt text plus answer tokens :func:`cache_len_for` leaves room for beside the visual tokens."""

def cache_len_for(visual_tokens: int, text_budget: int = TEXT_BUDGET) -> int:
    """A static cache length for prompts of at most ``visual_tokens`` visual tokens.

    Leaves room for ``text_budget`` more (question, template and answer), rounded up to a multiple of 256
    (STAR's 681 tokens: 1,792; Flash's 11,520: 12,544).
    """
    return -(-(visual_tokens + text_budget) // _CACHE_ROUNDING) * _CACHE_ROUNDING


def resolve_mode(mode: str, device: torch.device | str) -> str:
    """The concrete mode for ``mode`` on ``device``: ``"auto"`` is ``"compiled"`` on CUDA, ``"eager"`` elsewhere.

    Raises:
        ValueError: for a mode not in :data:`DECODE_MODES`.
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "compiled" if torch.device(device).type == "cuda" else "eager"


class Decoder:
    """Runs ``generate`` for one decoder geometry with the chosen cache and compilation.

    One decoder serves one model (its text config fixes the cache's layers and heads) and is shared by every
    answer of a session; calls are serialised (the static cache is one buffer).

    Args:
        text_config: the decoder's config (``model.config.get_text_config(decoder=True)``); sizes the cache.
        device: the decoder's device (decides ``"auto"``).
        mode: one of :data:`DECODE_MODES`.
        max_cache_len: positions of the static cache (default: ``max_position_embeddings`` capped at
            :data:`DEFAULT_MAX_CACHE_LEN`).
        compile_config: how the compiled mode compiles (default: transformers' ``CompileConfig()``, i.e.
            inductor with ``mode="reduce-overhead"``: CUDA graphs).

    Raises:
        ValueError: for an unknown mode or a non-positive ``max_cache_len``.
    """

    def __init__(
        self,
        text_config,
        device: torch.device | str,
        mode: str = "auto",
        *,
        max_cache_len: int | None = None,
        compile_config: CompileConfig | None = None,
    ):
        self.mode = resolve_mode(mode, device)
        self.requested_mode = mode
        self.text_config = text_config
        self.device = torch.device(device)
        if max_cache_len is None:
            limit = getattr(text_config, "max_position_embeddings", None) or DEFAULT_MAX_CACHE_LEN
            max_cache_len = min(int(limit), DEFAULT_MAX_CACHE_LEN)
        if isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int) or max_cache_len < 1:
            raise ValueError(f"max_cache_len must be a positive integer, got {max_cache_len!r}")
        self.max_cache_len = max_cache_len
        self.compile_config = compile_config if compile_config is not None else CompileConfig()
        self.compile_seconds: float | None = None
        """Seconds :meth:`warmup` took (compilation and graph capture); ``None`` before it or when not compiled."""
        self.compiles = 0
        """Times the decode step had to be (re)compiled: 1 after the warm-up, +1 for each cache growth."""
        self._cache: StaticCache | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model, mode: str = "auto", **kwargs) -> Decoder:
        """A decoder for ``model`` (any family model, or a plain causal LM), on its device."""
        device = next(model.parameters()).device
        return cls(model.config.get_text_config(decoder=True), device, mode, **kwargs)

    @property
    def uses_static_cache(self) -> bool:
        return self.mode in ("static", "compiled")

    def generate(self, model, /, *, prefix: Cache | None = None, **kwargs) -> torch.Tensor:
        """``model.generate(**kwargs)`` with this decoder's cache and compilation.

        Args:
            model: what ``generate`` is called on: a family model or its language model (whatever the caller
                would call ``generate`` on; the output is that method's).
            prefix: the key/value cache of the first tokens of the prompt (never modified); the prompt in
                ``kwargs`` is the *full* prompt.
            **kwargs: ``generate`` arguments (inputs, ``max_new_tokens``, sampling settings). A ``cache``
                argument is refused: pass a prefix as ``prefix=``.

        Returns:
            What ``model.generate`` returns.

        Raises:
            ValueError: for a ``cache``/``past_key_values``/``cache_implementation`` argument.
        """
        for name in ("cache", "past_key_values", "cache_implementation"):
            if kwargs.get(name) is not None:
                raise ValueError(f"Decoder.generate takes no {name}=; pass a prompt head's cache as prefix=")
        with self._lock, torch.inference_mode():
            if not self.uses_static_cache:
                cache = copy.deepcopy(prefix) if prefix is not None else None
                return model.generate(**kwargs, **({"cache": cache} if cache is not None else {}))
            cache = self._session_cache(self._needed_length(model, kwargs))
            if prefix is not None:
                _copy_prefix(prefix, cache)
            return model.generate(**kwargs, cache=cache, **self._compile_kwargs())

    def warmup(self, run: Callable[[], Any]) -> float | None:
        """Compile and capture the decode step now, by calling ``run`` (a short answer through this decoder).

        Returns:
            The seconds it took (also in ``compile_seconds``), or ``None`` when this mode compiles nothing.
        """
        if self.mode != "compiled":
            return None
        start = time.perf_counter()
        run()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.compile_seconds = (self.compile_seconds or 0.0) + seconds
        self.compiles = max(self.compiles, 1)
        return seconds

    # --- internals --------------------------------------------------------------------------------------------

    def _compile_kwargs(self) -> dict[str, Any]:
        if self.mode == "compiled":
            return {"compile_config": self.compile_config}
        return {"disable_compile": True}

    def _needed_length(self, model, kwargs: dict[str, Any]) -> int:
        """Cache positions this call needs: the prompt plus the most tokens it may generate."""
        inputs = kwargs.get("inputs_embeds")
        if inputs is None:
            inputs = kwargs.get("input_ids")
        prompt = 0 if inputs is None else int(inputs.shape[1])
        new = kwargs.get("max_new_tokens")
        if new is None:
            config = getattr(model, "generation_config", None)
            new = getattr(config, "max_new_tokens", None)
            if new is None:
                return max(prompt, int(getattr(config, "max_length", 0) or 0))
        return prompt + int(new)

    def _session_cache(self, needed: int) -> StaticCache:
        """The session's static cache, emptied; grown (and so recompiled) when ``needed`` exceeds it."""
        if needed > self.max_cache_len:
            grown = -(-max(needed, 2 * self.max_cache_len) // _CACHE_ROUNDING) * _CACHE_ROUNDING
            logger.warning(
                "a prompt plus answer of %d tokens exceeds the static cache (%d): growing it to %d%s; pass a "
                "larger max_cache_len to set_decoder to avoid this",
                needed, self.max_cache_len, grown, " (the decode step recompiles)" if self.mode == "compiled" else "",
            )
            self.max_cache_len = grown
            self._cache = None
            if self.mode == "compiled" and self.compiles:
                self.compiles += 1
        if self._cache is None:
            self._cache = StaticCache(config=self.text_config, max_cache_len=self.max_cache_len)
        else:
            self._cache.reset()  # zeroes keys and values (no stale NaN can leak through a mask) and the lengths
        return self._cache


def _copy_prefix(prefix: Cache, cache: StaticCache) -> None:
    """Write ``prefix``'s keys and values at the start of the (empty) static ``cache``; ``prefix`` is unchanged.

    Raises:
        ValueError: when the two caches have different numbers of layers.
    """
    if len(prefix.layers) != len(cache.layers):
        raise ValueError(
            f"the prefix cache has {len(prefix.layers)} layers but the decoder has {len(cache.layers)}; build the "
            "prefix with the same model"
        )
    for source, target in zip(prefix.layers, cache.layers, strict=True):
        target.update(source.keys, source.values)  # writes positions [0, s) and sets the layer's length to s
