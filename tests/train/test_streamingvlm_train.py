"""The StreamingVLM debug recipe trains a tiny model on the HF Trainer: the loss falls, the ViT and merger stay
bit-identical while every language-model weight changes, and the output loads back as a StreamingVLM model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flash_vstream import load_model
from flash_vstream.model.streamingvlm import make_tiny_streamingvlm
from flash_vstream.train.collate import collator_for
from flash_vstream.train.config import load_train_config
from flash_vstream.train.start import FAMILY_TRAINING, build_start
from flash_vstream.train.streamingvlm_collate import StreamingVLMDataset, build_streamingvlm_dataset
from flash_vstream.train.trainer import FlashVStreamTrainer, run_training

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "train" / "streamingvlm_debug.yaml"
STEPS = 12


def debug_config(tiny: Path, out: Path, *extra: str):
    return load_train_config(
        RECIPE,
        [
            f"model.start={tiny}",
            f"data.data={REPO / 'configs/train/streamingvlm_debug_chunks.jsonl'}",
            f"data.media_root={REPO / 'assets'}",
            f"training.output_dir={out}",
            f"training.max_steps={STEPS}",
            "training.save_strategy='no'",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_streamingvlm(tmp_path_factory.mktemp("tiny") / "streamingvlm")


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = debug_config(tiny, out)
    start = build_start(config.model)
    before = {k: v.detach().clone() for k, v in start.model.state_dict().items()}
    dataset = build_streamingvlm_dataset(config, start)
    trainer = FlashVStreamTrainer(
        model=start.model,
        args=config.training,
        train_dataset=dataset,
        data_collator=collator_for(start.model, start.tokenizer),
        processing_class=start.tokenizer,
        visual_prefixes=FAMILY_TRAINING[start.family].visual_prefixes,
    )
    trainer.train()
    trainer.save_model(str(out))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return start, before, dataset, losses, out


def test_start_point_is_the_streamingvlm_family_with_the_published_freeze(run):
    start, _, dataset, _, _ = run
    assert start.family == "streamingvlm" and isinstance(dataset, StreamingVLMDataset) and len(dataset) == 6
    trainable = {name for name, p in start.model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in start.model.named_parameters() if not name.startswith("model.visual.")}


def test_loss_falls(run):
    losses = run[3]
    assert len(losses) == STEPS
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def test_frozen_parts_unchanged_and_the_decoder_trained(run):
    start, before, _, _, _ = run
    after = start.model.state_dict()
    for name, value in before.items():
        if name.startswith("model.visual."):
            assert torch.equal(after[name], value), name
        else:
            assert not torch.equal(after[name], value), f"{name} did not change"


@pytest.mark.parametrize("family", [None, "streamingvlm"])
def test_output_loads_back(run, family):
    start, _, _, _, out = run
    loaded = load_model(out, device="cpu", dtype="float32", family=family)
    assert loaded.family == "streamingvlm"
    trained = start.model.state_dict()
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_through_run_training(tiny, tmp_path):
    result = run_training(debug_config(tiny, tmp_path, "training.max_steps=2"))
    assert result.family == "streamingvlm" and result.global_step == 2


def test_model_family_starts_from_a_plain_qwen2_5_vl_folder(tmp_path):
    """A plain Qwen2.5-VL folder (no marker) is the Flash family's unless ``model.family`` names StreamingVLM; the
    trained model carries the marker, so it loads (and streams) as StreamingVLM without being told."""
    import json

    from flash_vstream.families import FAMILY_MARKER, family_for_config

    plain = make_tiny_streamingvlm(tmp_path / "plain", layout="released")
    raw = json.loads((plain / "config.json").read_text())
    assert FAMILY_MARKER not in raw and family_for_config(raw).name == "flash"
    small = ["model.options.min_pixels=3136", "model.options.max_pixels=12544"]  # the own tiny layout's frames
    out = tmp_path / "run"
    result = run_training(debug_config(plain, out, "model.family=streamingvlm", "training.max_steps=2", *small))
    assert result.family == "streamingvlm" and result.model_dir == out
    saved = json.loads((out / "config.json").read_text())
    assert saved[FAMILY_MARKER] == "streamingvlm" and family_for_config(saved).name == "streamingvlm"
    loaded = load_model(out, device="cpu", dtype="float32")
    assert loaded.family == "streamingvlm"
