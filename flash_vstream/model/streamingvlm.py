"""The StreamingVLM family on transformers' own ``Qwen2_5_VLForConditionalGeneration``: settings, loading, make-tiny.

StreamingVLM streams unbounded video through a plain Qwen2.5-VL model by keeping a compact KV cache (an
attention-sink block of earlier text, a window of recent text and a window of recent vision) and re-numbering
the retained tokens' RoPE positions as if they were the whole sequence. Nothing in the model changes: the
family is the stock transformers class plus a cache manager (:mod:`flash_vstream.inference.streamingvlm_cache`)
and a session backend (:mod:`flash_vstream.inference.streamingvlm_session`).

This module holds:

- :class:`StreamingVLMSettings`, every size and default of the streaming policy (the published values by default);
  saved into ``config.json`` under ``streamingvlm_settings`` and overridable as load options;
- :func:`load_streamingvlm_model`, strict loading of plain Qwen2.5-VL checkpoints (``model_type "qwen2_5_vl"``;
  the published StreamingVLM fine-tune has this layout) in transformers 4.x or 5.x key naming;
- :func:`make_tiny_streamingvlm`, the ``make-tiny --variant streamingvlm`` checkpoint;
- :func:`forward_embeds` and :func:`encode_video`, the two model calls the cache manager makes.

A plain Qwen2.5-VL ``model_type`` belongs to the Flash family by default; this family loads it when named
(``load_model(..., family="streamingvlm")``, a preset with ``family: streamingvlm``) or when ``config.json``
carries ``"flash_vstream_family": "streamingvlm"``, which :func:`make_tiny_streamingvlm` and
:func:`mark_checkpoint` write.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from flash_vstream.model.checkpoints import quiet_load_report
from flash_vstream.model.loading import read_checkpoint_config
from flash_vstream.model.qwen2vl_checkpoints import LEGACY_TO_MODULE, checkpoint_keys, uses_legacy_keys

__all__ = [
    "POLICIES",
    "SETTINGS_KEY",
    "StreamingVLMSettings",
    "encode_video",
    "forward_embeds",
    "load_streamingvlm_model",
    "make_tiny_streamingvlm",
    "mark_checkpoint",
    "settings_of",
    "validate_streamingvlm_options",
]

FAMILY = "streamingvlm"
FAMILY_MARKER = "flash_vstream_family"
"""``config.json`` key of the family marker (``flash_vstream.families.FAMILY_MARKER``, read there)."""
SETTINGS_KEY = "streamingvlm_settings"
"""``config.json`` key holding the saved :class:`StreamingVLMSettings` (as a dict)."""

POLICIES = ("streamingvlm", "full", "sliding", "recompute")
"""Cache policies: the published method and the three published baselines (see :class:`StreamingVLMSettings`)."""


@dataclass(frozen=True)
class StreamingVLMSettings:
    """Every setting of the streaming loop; the defaults are the published ones.

    >>> StreamingVLMSettings().frames_per_chunk
    2
    """

    policy: str = "streamingvlm"
    """Cache policy: "streamingvlm" (sink + windows, retained KV re-positioned), "full" (no eviction), "sliding"
    (no eviction inside a window, the cache restarts every ``restart_seconds``: sliding window without overlap) or
    "recompute" (the "streamingvlm" windows, re-prefilled from scratch every chunk: sliding window with overlap)."""
    text_sink: int = 512
    """Tokens kept from the start of the previous-text block (the text attention sink)."""
    text_window: int = 512
    """Tokens kept from the end of the previous-text block (the recent-text window)."""
    vision_window: int = 16
    """Chunks whose vision tokens stay in the cache (16 s at 1-s chunks)."""
    text_rounds: int = 16
    """Rounds whose text (time stamp and commentary) stays in place before the commentary moves into the
    previous-text block."""
    chunk_seconds: float = 1.0
    """Seconds of video per round."""
    fps: float = 2.0
    """Frames per second fed to the model (2 frames per 1-s chunk: one temporal patch)."""
    restart_seconds: float = 100.0
    """"sliding" policy: seconds between cache restarts."""
    max_new_tokens: int = 20
    """Most tokens the model says per chunk."""
    do_sample: bool = True
    """Sample (the published setting) or decode greedily (tests, reproducible runs)."""
    temperature: float = 0.9
    """Sampling temperature."""
    repetition_penalty: float = 1.05
    """Repetition penalty over the retained token ids (1.0: off)."""
    max_pixels: int = 768 * 28 * 28
    """Most pixels per frame after resizing (602,112: 560x1008 for 16:9, 720 vision tokens per chunk)."""
    min_pixels: int = 100 * 28 * 28
    """Fewest pixels per frame after resizing (78,400)."""
    system_prompt: str = "You are a helpful assistant."
    """Text of the system turn (the Qwen default)."""
    query: str = "Commentate on this match"
    """Instruction after the first chunk's video (evicted with that round, as published)."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"streamingvlm policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("text_sink", "text_window", "vision_window", "text_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"streamingvlm {name} must be an integer >= 0, got {value!r}")
        if self.text_rounds < 1:
            raise ValueError("streamingvlm text_rounds must be >= 1 (the round being spoken stays)")
        for name in ("chunk_seconds", "fps", "restart_seconds", "temperature", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or math.isinf(value):
                raise ValueError(f"streamingvlm {name} must be a positive number, got {value!r}")
        frames = self.fps * self.chunk_seconds
        if abs(frames - round(frames)) > 1e-9 or round(frames) < 1:
            raise ValueError(f"streamingvlm fps x chunk_seconds must be a whole number of frames, got {frames}")
        if self.restart_seconds < self.chunk_seconds:
            raise ValueError("streamingvlm restart_seconds must be at least one chunk (chunk_seconds)")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"streamingvlm max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"streamingvlm needs 0 < min_pixels <= max_pixels, got {self.min_pixels}, "
                             f"{self.max_pixels}")

    @property
    def frames_per_chunk(self) -> int:
        return round(self.fps * self.chunk_seconds)

    def replace(self, **changes) -> StreamingVLMSettings:
        """A copy with ``changes`` (validated)."""
        return StreamingVLMSettings(**{**asdict(self), **changes})


def validate_streamingvlm_options(options: dict) -> dict:
    """The family's load-time options: any :class:`StreamingVLMSettings` field; returns the checked options.

    Raises:
        ValueError: for an unknown option or a bad value, naming it and listing the valid ones.
    """
    options = dict(options)
    known = [f.name for f in fields(StreamingVLMSettings)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown StreamingVLM option(s) {unknown}; valid options are {', '.join(known)}")
    StreamingVLMSettings(**options)  # raises naming the bad field
    return options


def settings_of(model) -> StreamingVLMSettings:
    """The settings a loaded model carries (``config.streamingvlm_settings``), or the published defaults."""
    saved = getattr(model.config, SETTINGS_KEY, None) or {}
    return StreamingVLMSettings(**saved)


def _read_config(path: Path) -> Qwen2_5_VLConfig:
    config_file = path / "config.json"
    raw = read_checkpoint_config(path)
    if raw.get("model_type") != "qwen2_5_vl":
        raise ValueError(f"{config_file} has model_type {raw.get('model_type')!r}; the StreamingVLM family loads "
                         f"plain Qwen2.5-VL checkpoints (model_type 'qwen2_5_vl')")
    for key in ("model_type", "architectures", "transformers_version"):
        raw.pop(key, None)
    try:
        return Qwen2_5_VLConfig(**raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_file} is invalid: {' '.join(str(err).split())}. Fix that field") from None


def load_streamingvlm_model(path: str | Path, *, dtype: torch.dtype = torch.float32,
                            device: str | torch.device = "cpu", **options) -> Qwen2_5_VLForConditionalGeneration:
    """Load a Qwen2.5-VL checkpoint strictly, with the StreamingVLM settings in its config.

    Args:
        path: checkpoint directory (transformers 4.x names ``visual.*``/``model.layers.*`` as published, or 5.x
            names ``model.visual.*``/``model.language_model.*`` as ``save_pretrained`` writes).
        dtype: weights dtype.
        device: where to put the model.
        **options: :class:`StreamingVLMSettings` overrides (checked by :func:`validate_streamingvlm_options`).

    Returns:
        The stock transformers model in eval mode; ``config.streamingvlm_settings`` holds the settings.

    Raises:
        FileNotFoundError: without weights.
        ValueError: for a bad option or config field, or naming every missing, unexpected or mis-shaped key.
    """
    path = Path(path)
    options = validate_streamingvlm_options(options)
    config = _read_config(path)
    saved = getattr(config, SETTINGS_KEY, None) or {}
    setattr(config, SETTINGS_KEY, asdict(StreamingVLMSettings(**{**saved, **options})))
    setattr(config, FAMILY_MARKER, FAMILY)
    key_mapping = LEGACY_TO_MODULE if uses_legacy_keys(checkpoint_keys(path)) else None
    with quiet_load_report():  # our error below names the keys
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, config=config, dtype=dtype, key_mapping=key_mapping, output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below with the other problems instead of a RuntimeError
        )
    problems = {
        "missing": sorted(info.get("missing_keys", [])),
        "unexpected": sorted(info.get("unexpected_keys", [])),
        "mis-shaped": sorted(str(entry[0]) if isinstance(entry, tuple) else str(entry)
                             for entry in info.get("mismatched_keys", [])),
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        detail = "; ".join(f"{kind} keys: {', '.join(keys)}" for kind, keys in problems.items())
        raise ValueError(f"checkpoint {path} does not match the Qwen2.5-VL layout ({detail}); it must hold exactly "
                         f"the keys of Qwen2_5_VLForConditionalGeneration")
    return model.to(device).eval()


def mark_checkpoint(path: str | Path, settings: StreamingVLMSettings | None = None) -> Path:
    """Write the family marker (and ``settings``) into a checkpoint's ``config.json`` in place.

    After this, ``load_model(path)`` picks the StreamingVLM family without being told.
    """
    config_file = Path(path) / "config.json"
    raw = json.loads(config_file.read_text())
    raw[FAMILY_MARKER] = FAMILY
    if settings is not None:
        raw[SETTINGS_KEY] = asdict(settings)
    config_file.write_text(json.dumps(raw, indent=2) + "\n")
    return Path(path)


# --- the two model calls ------------------------------------------------------------------------------------


def encode_video(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """``(n, h)`` decoder-width vision tokens of one chunk (the ViT and merger run on these frames only)."""
    out = model.model.get_video_features(pixel_values.to(model.device, model.dtype), grid_thw.to(model.device),
                                         return_dict=True)
    return torch.cat(list(out.pooler_output), dim=0)


def forward_embeds(model, cache, input_ids: torch.Tensor, positions: torch.Tensor,
                   vision: torch.Tensor | None = None, logits: str = "last") -> torch.Tensor:
    """Run new tokens through the decoder on top of ``cache`` (which they extend); returns their logits.

    Args:
        model: the Qwen2.5-VL model.
        cache: a transformers ``DynamicCache`` holding the retained tokens (rotated keys).
        input_ids: ``(n,)`` new token ids (``<|video_pad|>`` where ``vision`` goes).
        positions: ``(3, n)`` their M-RoPE positions (t, h, w).
        vision: ``(m, h)`` vision tokens for the ``m`` video placeholders, or None.
        logits: "last" -> ``(1, vocab)``; "all" -> ``(n, vocab)``.
    """
    from flash_vstream.model.splice import scatter_visual_tokens

    ids = input_ids.to(model.device)[None]  # (1, n)
    embeds = model.get_input_embeddings()(ids)  # (1, n, h)
    is_video = ids == model.config.video_token_id
    if vision is not None or bool(is_video.any()):
        empty = embeds.new_zeros(0, embeds.shape[-1])
        embeds = scatter_visual_tokens(embeds, is_video, empty if vision is None else vision)
    out = model.model.language_model(inputs_embeds=embeds, position_ids=positions.to(model.device)[:, None],
                                     cache=cache, use_cache=True)
    hidden = out.last_hidden_state[0]  # (n, h)
    return model.lm_head(hidden[-1:] if logits == "last" else hidden).float()


# --- make-tiny ----------------------------------------------------------------------------------------------


def tiny_streamingvlm_config(tokenizer=None, *, num_hidden_layers: int = 2) -> Qwen2_5_VLConfig:
    """A tiny Qwen2.5-VL config (the tiny Flash Qwen2.5-VL shapes) with the tokenizer's special ids."""
    from flash_vstream.model.tiny_qwen2vl import TINY_TEXT, TINY_VISION
    from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = tokenizer or build_tiny_tokenizer("chatml")
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return Qwen2_5_VLConfig(
        vocab_size=len(tokenizer), vision_config=dict(TINY_VISION["flash-qwen2_5vl"]),
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        **ids, **{**TINY_TEXT, "num_hidden_layers": num_hidden_layers},
    )


TINY_SETTINGS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
"""Settings saved with the tiny checkpoint: small frames (at most 16 vision tokens per chunk)."""


def make_tiny_streamingvlm(out_dir: str | Path, variant: str = FAMILY, *, layout: str = "own",
                           weights_format: str = "safetensors", seed: int = 0, num_hidden_layers: int = 2) -> Path:
    """Write a tiny random StreamingVLM checkpoint with its tokenizer (files in ``out_dir`` are replaced).

    Args:
        out_dir: directory to create.
        variant: ``"streamingvlm"``.
        layout: ``"own"`` (``save_pretrained`` output plus the family marker and small-frame settings) or
            ``"released"`` (the published layout: plain Qwen2.5-VL, transformers-4.x key names, no marker; load
            it with ``family="streamingvlm"``).
        weights_format: ``"safetensors"`` or ``"bin"`` (sharded, with an index).
        seed: torch seed of the random weights.
        num_hidden_layers: decoder depth (1 makes a full recomputation exactly comparable; tests use it).

    Raises:
        ValueError: for an unknown variant, layout or weights format.
    """
    from flash_vstream.model.qwen2vl_checkpoints import to_published_state_dict
    from flash_vstream.model.tiny import prepare_tiny_dir
    from flash_vstream.model.tiny_qwen2vl import released_config_dict, write_weights
    from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer

    if variant != FAMILY:
        raise ValueError(f"unknown tiny StreamingVLM variant {variant!r}; the variant is {FAMILY!r}")
    out = prepare_tiny_dir(out_dir, layout, weights_format)
    tokenizer = build_tiny_tokenizer("chatml")
    config = tiny_streamingvlm_config(tokenizer, num_hidden_layers=num_hidden_layers)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    if layout == "own":
        write_weights(out, state, weights_format, max_shard_bytes=100_000)
        model.config.save_pretrained(out)
        mark_checkpoint(out, StreamingVLMSettings(**TINY_SETTINGS))
    else:
        write_weights(out, to_published_state_dict(state), weights_format, max_shard_bytes=100_000)
        released = released_config_dict(config, "flash-qwen2_5vl")
        (out / "config.json").write_text(json.dumps(released, indent=2) + "\n")
    GenerationConfig(bos_token_id=config.text_config.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
