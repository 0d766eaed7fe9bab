"""Factories for the trainer tests: tiny start points, the debug recipes run on them, losses read back.

- :func:`make_tiny_models`: a tiny STAR checkpoint, a tiny Flash checkpoint and a tiny plain LLaMA + CLIP pair (the
  stage-1 start point), all written locally (no downloads).
- :func:`recipe_config`: ``configs/train/<name>.yaml`` with the tiny start point, the repository's debug data and a
  temporary run folder put in through ``key=value`` overrides, as a user would.
- :func:`dataset_loss`: the token-weighted loss of a model over every sample of a config's data, one sample at a
  time, without dropout: the same number for the same weights, so "before" and "after" compare exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flash_vstream.train.callbacks import read_metrics
from flash_vstream.train.config import TrainConfig, load_train_config
from flash_vstream.train.start import StartPoint

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"
TRAIN_CONFIGS = REPO / "configs" / "train"
SAMPLE_VIDEO = ASSETS / "sample.mp4"


@dataclass(frozen=True)
class TinyModels:
    star: Path
    flash: Path
    llm: Path
    clip: Path


def make_tiny_models(root: Path) -> TinyModels:
    from flash_vstream.model.tiny import make_tiny_star
    from flash_vstream.model.tiny_qwen2vl import make_tiny_flash
    from flash_vstream.train.tiny_parts import make_tiny_parts

    star = make_tiny_star(root / "star-vicuna", "star-vicuna")
    flash = make_tiny_flash(root / "flash-qwen2vl", "flash-qwen2vl")
    llm, clip = make_tiny_parts(root / "parts")
    return TinyModels(star=star, flash=flash, llm=llm, clip=clip)


LONG_CLIP_FRAMES = 30
"""More than the STAR memory's 25 abstract slots + 1 current frame, so the abstract memory's attention runs (and
trains): on shorter clips the abstract memory is the frames themselves and its q/k weights get no gradient."""


def make_long_clip_data(root: Path) -> Path:
    """``root/clip30/`` (30 distinct 64x64 frames) and ``captions.jsonl`` / ``chat.jsonl`` rows about it, shaped
    like the debug data (one-exchange captions; multi-turn and text-only chats); returns ``root``."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "clip30").mkdir(parents=True, exist_ok=True)
    for i in range(LONG_CLIP_FRAMES):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "clip30" / f"{i:06d}.jpg")
    for name in ("debug_captions.jsonl", "debug_chat.jsonl"):
        rows = [json.loads(line) for line in (TRAIN_CONFIGS / name).read_text().splitlines()]
        for row in rows:
            if "video" in row:
                row["video"] = "clip30"
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def start_overrides(name: str, tiny: TinyModels) -> list[str]:
    """The overrides that point recipe ``name`` at the tiny start point."""
    if name == "star_stage1_debug":
        return [f"model.llm={tiny.llm}", f"model.vision_tower={tiny.clip}"]
    if name == "star_debug":
        return [f"model.start={tiny.star}"]
    if name == "flash_debug":
        return [f"model.start={tiny.flash}"]
    raise ValueError(f"no tiny start point for {name}")


def recipe_config(name: str, tiny: TinyModels, out: Path, *extra: str) -> TrainConfig:
    """``configs/train/<name>.yaml`` on the tiny start point, the repository's data, run folder ``out``."""
    path = TRAIN_CONFIGS / f"{name}.yaml"
    overrides = [*start_overrides(name, tiny), f"data.media_root={ASSETS}", f"training.output_dir={out}"]
    data = load_train_config(path, overrides).data.data  # relative to the repository root
    return load_train_config(path, [*overrides, f"data.data={REPO / data}", *extra])


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, loss)`` of every training log line of a run."""
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def dataset_loss(start: StartPoint, config: TrainConfig) -> float:
    """Mean loss per supervised token of ``start.model`` over every sample of ``config.data`` (eval mode)."""
    from flash_vstream.train.collate import collator_for
    from flash_vstream.train.trainer import build_dataset

    dataset = build_dataset(config, start)
    collate = collator_for(start.model, start.tokenizer)
    model = start.model.eval()
    total, tokens = 0.0, 0
    for i in range(len(dataset)):
        batch = collate([dataset[i]])
        count = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * count
        tokens += count
    return total / tokens
