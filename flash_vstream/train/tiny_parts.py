"""Tiny stand-ins for a plain pretrained LLM and a CLIP vision tower, the STAR stage-1 start point.

``make_tiny_parts(out)`` writes ``out/llm`` (a 2-layer LLaMA with the tiny LLaMA tokenizer, what Vicuna-7B is at
full size) and ``out/clip`` (a 3-layer CLIP vision tower at 224 px, patch 14, what CLIP ViT-L/14 is), both plain
``save_pretrained`` folders with nothing Flash-VStream-specific in them. ``configs/train/star_stage1_debug.yaml``
trains from them::

    python scripts/make_tiny_parts.py --out runs/tiny
    flash-vstream train --config configs/train/star_stage1_debug.yaml
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["make_tiny_parts"]


def make_tiny_parts(out: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny plain LLaMA (with tokenizer) and a tiny CLIP vision tower; returns ``(llm_dir, clip_dir)``."""
    from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from flash_vstream.model.tiny import tiny_clip_config, tiny_text_config
    from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer

    out = Path(out)
    llm_dir, clip_dir = out / "llm", out / "clip"
    tokenizer = build_tiny_tokenizer("llama")
    text = {k: v for k, v in tiny_text_config("llama", len(tokenizer)).items() if k != "model_type"}
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**text)).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    CLIPVisionModel(tiny_clip_config()).save_pretrained(clip_dir)
    return llm_dir, clip_dir
