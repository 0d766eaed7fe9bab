"""The three recipes (their debug variants on tiny models) train through the HF Trainer: the loss falls, frozen
weights stay bit-identical and every trainable one changes, the outputs load and answer through ``ask``, the LoRA
merge equals the adapter, and an interrupted run resumes to the uninterrupted run's losses and weights."""

from __future__ import annotations

import json
import re

import pytest
import torch
from trainerfixtures import (
    SAMPLE_VIDEO,
    dataset_loss,
    make_long_clip_data,
    make_tiny_models,
    recipe_config,
    state_dict,
    step_losses,
)
from transformers import TrainerCallback, set_seed

from flash_vstream import load_model
from flash_vstream.train.callbacks import read_metrics
from flash_vstream.train.config import CONFIG_FILE, config_to_dict, load_train_config
from flash_vstream.train.start import StartPoint, build_start
from flash_vstream.train.trainer import run_training

RECIPES = ("star_stage1_debug", "star_debug", "flash_debug")
STEPS = 16

# What each recipe trains, restated from the published recipes (not read from the code under test).
STAR_MEMORY_QK = r"memory\.attention\.(q_proj|k_proj)\.(weight|bias)"
TRAINED = {
    # stage 1: projector + abstract memory attention (the LLM and CLIP frozen)
    "star_stage1_debug": rf"projector\..*|{STAR_MEMORY_QK}",
    # stage 2: everything but the CLIP tower
    "star_debug": rf"projector\..*|{STAR_MEMORY_QK}|language_model\..*",
    # Flash LoRA, merged: the LLM linears' and merger MLP's weights (biases untouched), and lm_head in full
    "flash_debug": r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight"
    r"|model\.visual\.merger\.mlp\.[02]\.weight|lm_head\.weight",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """Each recipe's debug variant trained for STEPS steps, with its start model's weights and data loss.

    The data are the debug data with a 30-frame clip in place of the 7-second sample video, so the STAR abstract
    memory's attention takes part (it does from 27 frames on).
    """
    root = tmp_path_factory.mktemp("runs")
    media = make_long_clip_data(tmp_path_factory.mktemp("media"))
    out = {}
    for name in RECIPES:
        data = media / recipe_config(name, tiny, root / name).data.data.split("/")[-1]
        extra = (f"training.max_steps={STEPS}", "training.save_steps=8", f"data.data={data}",
                 f"data.media_root={media}")
        config = recipe_config(name, tiny, root / name, *extra)
        set_seed(config.training.seed)  # the new parts of a model built from LLM + CLIP, as run_training does
        start = build_start(config.model, with_lora=False)
        before = state_dict(start.model)
        loss_before = dataset_loss(start, config)
        result = run_training(config)
        out[name] = (config, result, before, loss_before)
    return out


def trained_model(result):
    loaded = load_model(result.model_dir, device="cpu", dtype="float32")
    return loaded, StartPoint(loaded.model, loaded.tokenizer, result.family)


@pytest.mark.parametrize("name", RECIPES)
def test_loss_falls(runs, name):
    config, result, _, loss_before = runs[name]
    logged = [loss for _, loss in step_losses(result.output_dir)]
    assert len(logged) == STEPS
    assert sum(logged[-4:]) / 4 < sum(logged[:4]) / 4
    _, trained = trained_model(result)
    loss_after = dataset_loss(trained, config)
    assert loss_after < loss_before - 0.02, (loss_before, loss_after)


@pytest.mark.parametrize("name", RECIPES)
def test_frozen_weights_identical_trainable_changed(runs, name):
    _, result, before, _ = runs[name]
    loaded, _ = trained_model(result)
    after = loaded.model.state_dict()
    assert set(after) == set(before)
    trained = re.compile(TRAINED[name])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {k for k in before if trained.fullmatch(k)}
    assert expected, "the re-statement must name some weights"
    assert changed == expected, (sorted(changed - expected)[:5], sorted(expected - changed)[:5])


def test_lora_run_writes_adapter_and_merged_model_that_agree(runs):
    from peft import PeftModel

    config, result, _, _ = runs["flash_debug"]
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (64, 32, 0.05)
    assert adapter["modules_to_save"] == ["lm_head"]
    base = load_model(config.model.start, device="cpu", dtype="float32")
    with_adapter = PeftModel.from_pretrained(base.model, str(result.adapter_dir)).eval()
    merged, _ = trained_model(result)
    inputs = merged.input_builder("What happens?", frames=_frames(4))
    with torch.no_grad():
        expected = with_adapter(**inputs).logits
        got = merged.model.eval()(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def _frames(count: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (count, 56, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", RECIPES)
def test_trained_output_answers_through_ask(runs, name, capsys):
    from flash_vstream.cli import main

    _, result, _, _ = runs[name]
    argv = ["ask", "--model", str(result.model_dir), "--video", str(SAMPLE_VIDEO), "What happens in the video?"]
    assert main([*argv, "--json", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(payload["answer"], str)
    assert payload["num_frames"] == 7 and payload["num_visual_tokens"] > 0


def test_metrics_and_resolved_config_in_every_folder(runs):
    config, result, _, _ = runs["flash_debug"]
    records = read_metrics(result.output_dir)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    assert {"loss", "grad_norm", "learning_rate", "epoch", "time"} <= set(records[0])
    assert "train_runtime" in records[-1]
    folders = [result.output_dir, result.adapter_dir, *sorted(result.output_dir.glob("checkpoint-*"))]
    assert [f.name for f in folders[2:]] == ["checkpoint-16", "checkpoint-8"]
    for folder in folders:
        assert config_to_dict(load_train_config(folder / CONFIG_FILE)) == config_to_dict(config), folder


class Interrupt(TrainerCallback):
    """Stops the run like a crash (an exception out of the training loop) before step ``at`` begins."""

    def __init__(self, at: int):
        self.at = at

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.at:
            raise KeyboardInterrupt(f"interrupted before step {self.at}")


def test_interrupted_run_resumes_to_the_same_losses_and_weights(tiny, tmp_path, capsys):
    # 8 samples, 2 per step: 4 steps per epoch, a checkpoint at step 5 (mid-epoch 2), interrupted before step 7.
    extra = ("training.max_steps=8", "training.save_steps=5")
    whole = run_training(recipe_config("star_debug", tiny, tmp_path / "whole", *extra))
    cut = recipe_config("star_debug", tiny, tmp_path / "cut", *extra)
    with pytest.raises(KeyboardInterrupt):
        run_training(cut, callbacks=[Interrupt(at=7)])
    assert [s for s, _ in step_losses(tmp_path / "cut")] == [1, 2, 3, 4, 5, 6]
    resumed = run_training(recipe_config("star_debug", tiny, tmp_path / "cut", *extra))  # resume: auto
    assert "resuming" in capsys.readouterr().out
    assert step_losses(tmp_path / "cut") == step_losses(tmp_path / "whole")  # exactly: same order, same RNG
    a = load_model(whole.model_dir, device="cpu", dtype="float32").model.state_dict()
    b = load_model(resumed.model_dir, device="cpu", dtype="float32").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_never_refuses_a_run_folder_with_checkpoints(runs, tiny):
    from flash_vstream.train.config import ConfigError

    config, result, _, _ = runs["star_debug"]
    again = recipe_config("star_debug", tiny, result.output_dir, "resume=never")
    with pytest.raises(ConfigError, match="already holds checkpoint-16"):
        run_training(again)


def test_changed_settings_are_listed_on_resume(runs, tiny, tmp_path):
    from flash_vstream.train.trainer import changed_settings

    config, result, _, _ = runs["star_debug"]
    checkpoint = result.output_dir / "checkpoint-8" / CONFIG_FILE
    assert changed_settings(checkpoint, config) == []
    changed = load_train_config(checkpoint, ["training.learning_rate=0.5", "model.lora.r=4"])
    assert changed_settings(checkpoint, changed) == [
        "model.lora.r: 64 -> 4", f"training.learning_rate: {config.training.learning_rate!r} -> 0.5"]
