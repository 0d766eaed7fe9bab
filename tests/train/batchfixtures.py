"""Factories for the encoder / template / collator tests: tiny models, media on disk, samples, per-sample losses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from flash_vstream.model.modeling import FlashVStreamForCausalLM
from flash_vstream.model.qwen2vl import backbone_for
from flash_vstream.model.tiny import tiny_star_config
from flash_vstream.model.tiny_qwen2vl import tiny_flash_config
from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer
from flash_vstream.train.data import load_samples

TINY_FEATURE = (256, 32)
"""CLIP patches x width of the tiny STAR vision tower (224 px, patch 14, width 32)."""


def turn(who: str, value: str) -> dict:
    return {"from": who, "value": value}


DIALOGUE = [
    turn("human", "What is it?\n<video>"),
    turn("gpt", "A cat."),
    turn("human", "Colour?"),
    turn("gpt", "Blue."),
]
"""Two exchanges, the placeholder after the question (as some published rows put it)."""

CAPTION = [turn("human", "Describe the video briefly.\n<image>"), turn("gpt", "A red square moves left.")]
TEXT_ONLY = [turn("human", "Say hello."), turn("gpt", "Hello."), turn("human", "Again?"), turn("gpt", "Hello!")]


def star_model(decoder: str = "llama", seed: int = 0):
    """``(model, tokenizer)``: a tiny STAR model (LLaMA -> vicuna_v1, Qwen2 -> chat_template), eval mode, fp32."""
    tokenizer = build_tiny_tokenizer("llama" if decoder == "llama" else "chatml")
    torch.manual_seed(seed)
    return FlashVStreamForCausalLM(tiny_star_config(decoder, len(tokenizer))).eval(), tokenizer


def flash_model(seed: int = 0, **memory):
    """``(model, tokenizer)``: a tiny Flash Qwen2-VL model whose memory compresses (N_CSM 2, N_DAM 1)."""
    tokenizer = build_tiny_tokenizer("chatml")
    config = tiny_flash_config(tokenizer, **(memory or {"temporal_length": 4, "spatial_length": 2}))
    torch.manual_seed(seed)
    return backbone_for(config.model_type).model_class(config).eval(), tokenizer


def write_frame_folder(folder: Path, count: int, size: tuple[int, int] = (112, 112), seed: int = 0) -> Path:
    """``count`` random PNG frames ``000000.png`` ... (lossless, so every read gives the same pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return folder


def write_features(path: Path, feature: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"feature": feature.contiguous()}, str(path))
    return path


def random_features(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, *TINY_FEATURE, generator=torch.Generator().manual_seed(seed))


def row(sample_id: str, conversations: list[dict], **media) -> dict:
    return {"id": sample_id, "conversations": conversations, **media}


def samples(root: Path, rows: list[dict], name: str = "data.json"):
    """The samples of ``rows`` written as a JSON file under ``root`` (media resolved under ``root``; strict)."""
    (root / name).write_text(json.dumps(rows))
    return load_samples(root / name, root, strict=True).samples


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(b,)`` mean next-token cross-entropy of each row over its supervised tokens (fp32)."""
    shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shifted.transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )  # (b, L-1)
    counts = (targets != -100).sum(dim=1)
    return losses.sum(dim=1) / counts
