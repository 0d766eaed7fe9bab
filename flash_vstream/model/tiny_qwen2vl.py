"""Tiny random Flash-family checkpoints on Qwen2-VL and Qwen2.5-VL, for tests and GPU-less smoke runs (``make-tiny``).

Shapes that decide token counts keep their real values (patch 14, merge 2, temporal patch 2, the published Flash
Memory defaults); widths and depths are tiny. The Qwen2.5-VL variant has a 56-pixel attention window and one
full-attention block of two, so at test frame sizes its windows really split (the real model: 112 px, 4 of 32).
Nothing is downloaded; the tokenizer is trained locally
(:func:`~flash_vstream.model.tiny_tokenizer.build_tiny_tokenizer`).

Two layouts:

- ``"own"``: this project's format, ``save_pretrained`` output (Flash ``model_type``, transformers 5.x key names).
- ``"released"``: the layout of published checkpoints, transformers-4.x key names (``visual.*``,
  ``model.layers.*``, ``lm_head.*``) and a flat text config:

  - ``flash-qwen2vl``: the published Flash-VStream-Qwen layout (``model_type "flash_vstream_qwen2_vl"``,
    ``vision_config.flash_memory_config``);
  - ``flash-qwen2_5vl``: no Flash-VStream checkpoint on Qwen2.5-VL was published, so this is the plain
    Qwen2.5-VL-Instruct layout (``model_type "qwen2_5_vl"``, the hub ``config.json`` fields including
    ``in_chans``/``spatial_patch_size``), which loads with the Flash Memory defaults.

Both layouts write safetensors or ``.bin``; ``.bin`` is sharded with an index, as large releases are.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig

from flash_vstream.memory.flash import FlashMemoryConfig
from flash_vstream.model.qwen2vl import backbone_for
from flash_vstream.model.qwen2vl_checkpoints import to_published_state_dict
from flash_vstream.model.tiny import prepare_tiny_dir
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer

VARIANTS = {"flash-qwen2vl": "qwen2_vl", "flash-qwen2_5vl": "qwen2_5_vl"}
"""``make-tiny`` variant -> the backbone's plain ``model_type``."""

TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},  # sums to head_dim / 2 = 4
}
TINY_VISION = {
    "flash-qwen2vl": {
        "depth": 2,
        "embed_dim": 32,  # ViT width
        "hidden_size": 32,  # LLM width (the merger's output)
        "mlp_ratio": 4,
        "num_heads": 4,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "flash-qwen2_5vl": {
        "depth": 2,
        "hidden_size": 32,  # ViT width
        "out_hidden_size": 32,  # LLM width (the merger's output)
        "intermediate_size": 40,
        "num_heads": 4,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,  # 2x2 merged tokens per window: a 112x112 frame has 4 windows
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    },
}
_SPECIAL_TOKENS = {
    "bos_token_id": "<|endoftext|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny Flash variant {variant!r}; choose one of {sorted(VARIANTS)}")


def tiny_flash_config(tokenizer=None, *, variant: str = "flash-qwen2vl", **memory):
    """A tiny Flash config of ``variant`` with the tokenizer's special ids wired in.

    Args:
        tokenizer: a ChatML tokenizer with the Qwen-VL vision specials (default: the tiny one).
        variant: ``"flash-qwen2vl"`` or ``"flash-qwen2_5vl"``.
        **memory: :class:`FlashMemoryConfig` overrides (e.g. ``temporal_length=8`` for small tests).

    Raises:
        ValueError: for an unknown variant.
    """
    _check_variant(variant)
    tokenizer = tokenizer or build_tiny_tokenizer("chatml")
    published = FlashMemoryConfig(**memory).to_published()
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in _SPECIAL_TOKENS.items()}
    return backbone_for(VARIANTS[variant]).config_class(
        vocab_size=len(tokenizer),
        vision_config={**TINY_VISION[variant], "flash_memory_config": published},
        bos_token_id=ids.pop("bos_token_id"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **ids,
        **TINY_TEXT,
    )


def make_tiny_flash(
    out_dir: str | Path,
    variant: str = "flash-qwen2vl",
    *,
    layout: str = "own",
    weights_format: str = "safetensors",
    seed: int = 0,
    max_shard_bytes: int = 100_000,
) -> Path:
    """Write a tiny random Flash checkpoint with its tokenizer (files in ``out_dir`` are replaced).

    Args:
        out_dir: directory to create.
        variant: ``"flash-qwen2vl"`` or ``"flash-qwen2_5vl"``.
        layout: ``"own"`` or ``"released"`` (see the module docstring).
        weights_format: ``"safetensors"`` (one file) or ``"bin"`` (sharded ``.bin`` files with an index).
        seed: torch seed of the random weights.
        max_shard_bytes: most bytes per ``.bin`` shard (small, so tests see several shards).

    Returns:
        ``out_dir`` as a ``Path``; ``flash_vstream.load_model(out_dir)`` loads it.

    Raises:
        ValueError: for an unknown variant, layout or weights format.
    """
    _check_variant(variant)
    out = prepare_tiny_dir(out_dir, layout, weights_format)
    tokenizer = build_tiny_tokenizer("chatml")
    config = tiny_flash_config(tokenizer, variant=variant)
    torch.manual_seed(seed)
    model = backbone_for(config.model_type).model_class(config).eval()
    if layout == "own":
        model.save_pretrained(out)
        if weights_format == "bin":
            (out / "model.safetensors").unlink()
            write_weights(out, _contiguous(model.state_dict()), "bin", max_shard_bytes)
    else:
        write_weights(out, _contiguous(to_published_state_dict(model.state_dict())), weights_format, max_shard_bytes)
        (out / "config.json").write_text(json.dumps(released_config_dict(config, variant), indent=2) + "\n")
    GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.contiguous() for key, value in state.items()}


def write_weights(out: Path, state: dict[str, torch.Tensor], weights_format: str, max_shard_bytes: int) -> None:
    """``model.safetensors``, or ``pytorch_model-0000i-of-0000n.bin`` shards plus ``pytorch_model.bin.index.json``."""
    if weights_format == "safetensors":
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    shards, current, size = [], {}, 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = state[key]
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, out / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")


def released_config_dict(config, variant: str) -> dict:
    """``config.json`` as published checkpoints have it: flat text fields, nested vision fields.

    ``flash-qwen2vl``: Flash-VStream-Qwen (transformers 4.45, ``flash_memory_config`` in the vision config);
    ``flash-qwen2_5vl``: plain Qwen2.5-VL-Instruct (no memory settings; the hub file's extra vision keys).
    """
    text = config.text_config.to_dict()
    flat = {k: text[k] for k in RELEASED_TEXT_KEYS if k in text}
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": list(text["rope_parameters"]["mrope_section"])}
    flat["rope_theta"] = text["rope_parameters"]["rope_theta"]
    vision = {k: v for k, v in config.vision_config.to_dict().items() if k in TINY_VISION[variant]}
    vision["hidden_act"] = config.vision_config.hidden_act
    specials = {
        name: getattr(config, name)
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    }
    if variant == "flash-qwen2vl":
        vision["flash_memory_config"] = config.vision_config.flash_memory_config
        head = {"architectures": ["FlashVStreamQwen2VLModel"], "model_type": "flash_vstream_qwen2_vl"}
        version = "4.45.0"
    else:
        # The Qwen2.5-VL-Instruct hub config also names the channels and patch size the 4.x way.
        vision.update(in_chans=vision["in_channels"], spatial_patch_size=vision["patch_size"])
        head = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"}
        version = "4.49.0"
    return {
        **head,
        "torch_dtype": "float32",
        "transformers_version": version,
        **flat,
        "vision_config": vision,
        **specials,
        "tie_word_embeddings": config.tie_word_embeddings,
    }


RELEASED_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "initializer_range",
    "use_cache",
)
