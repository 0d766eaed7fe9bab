"""Tiny random Flash-VStream-Qwen checkpoints, for tests and GPU-less smoke runs (``make-tiny``).

Shapes that decide token counts keep their real values (patch 14, merge 2, temporal patch 2, the published
Flash Memory defaults); widths and depths are tiny. The checkpoint is written in the published
Flash-VStream-Qwen layout (reference ``flash-vstream.md`` §8): ``model_type "flash_vstream_qwen2_vl"``,
``vision_config.flash_memory_config``, a flat transformers-4.45-style text config, and Qwen2-VL keys in 4.45
naming (``visual.*``, ``model.layers.*``, ``lm_head.*``). Nothing is downloaded; the tokenizer is trained
locally (:func:`~flash_vstream.model.tiny_tokenizer.build_tiny_tokenizer`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig

from flash_vstream.memory.flash import FlashMemoryConfig
from flash_vstream.model.qwen2vl import FlashVStreamQwen2VLConfig, FlashVStreamQwen2VLForConditionalGeneration
from flash_vstream.model.qwen2vl_checkpoints import to_published_state_dict
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer

TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
}
TINY_VISION = {
    "depth": 2,
    "embed_dim": 32,
    "hidden_size": 32,
    "mlp_ratio": 4,
    "num_heads": 4,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


def tiny_flash_config(tokenizer=None, **memory) -> FlashVStreamQwen2VLConfig:
    """A tiny config with the tokenizer's special ids wired in.

    Args:
        tokenizer: a ChatML tokenizer with the Qwen2-VL vision specials (default: the tiny one).
        **memory: :class:`FlashMemoryConfig` overrides (e.g. ``temporal_length=8`` for small tests).
    """
    tokenizer = tokenizer or build_tiny_tokenizer("chatml")
    published = FlashMemoryConfig(**memory).to_published()
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in _SPECIAL_TOKENS.items()}
    return FlashVStreamQwen2VLConfig(
        vocab_size=len(tokenizer),
        vision_config={**TINY_VISION, "flash_memory_config": published},
        bos_token_id=ids.pop("bos_token_id"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **ids,
        **TINY_TEXT,
    )


_SPECIAL_TOKENS = {
    "bos_token_id": "<|endoftext|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def make_tiny_flash(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Flash-VStream-Qwen checkpoint in the published layout.

    Args:
        out_dir: directory to create (or overwrite files in).
        seed: torch seed of the random weights.

    Returns:
        ``out_dir`` as a ``Path``; ``flash_vstream.load_model(out_dir)`` loads it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer("chatml")
    config = tiny_flash_config(tokenizer)
    torch.manual_seed(seed)
    model = FlashVStreamQwen2VLForConditionalGeneration(config).eval()
    state = {k: v.contiguous() for k, v in to_published_state_dict(model.state_dict()).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(published_config_dict(config), indent=2) + "\n")
    GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def published_config_dict(config: FlashVStreamQwen2VLConfig) -> dict:
    """``config.json`` as the published code (transformers 4.45) wrote it: flat text fields, nested vision."""
    text = config.text_config.to_dict()
    flat = {k: text[k] for k in (*TINY_TEXT_KEYS,) if k in text}
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": list(text["rope_parameters"]["mrope_section"])}
    flat["rope_theta"] = text["rope_parameters"]["rope_theta"]
    vision = {k: v for k, v in config.vision_config.to_dict().items() if k in VISION_KEYS}
    return {
        "architectures": ["FlashVStreamQwen2VLModel"],
        "model_type": "flash_vstream_qwen2_vl",
        "torch_dtype": "float32",
        "transformers_version": "4.45.0",
        **flat,
        "vision_config": vision,
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "tie_word_embeddings": config.tie_word_embeddings,
    }


TINY_TEXT_KEYS = (
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
VISION_KEYS = (*TINY_VISION, "hidden_act", "flash_memory_config")
