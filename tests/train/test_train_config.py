"""The typed training config: YAML + base files + dotted overrides, unknown keys and bad values named, the resolved
tree written and read back, and the ``train`` command's one-line errors."""

from __future__ import annotations

import pytest
import yaml

from flash_vstream.train.config import (
    CONFIG_FILE,
    ConfigError,
    LoraArgs,
    ModelArgs,
    config_to_dict,
    dump_config,
    load_train_config,
    parse_overrides,
)
from flash_vstream.train.train_cli import main

MINIMAL = {"model": {"start": "ckpt"}, "data": {"data": "rows.jsonl"}, "training": {"output_dir": "run"}}


def write(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture
def minimal(tmp_path):
    return write(tmp_path / "train.yaml", MINIMAL)


def test_file_then_overrides_with_yaml_values(minimal):
    config = load_train_config(
        minimal,
        ["training.learning_rate=1e-4", "model.lora.enabled=true", "model.lora.r=8", "model.options.retrieval=paper",
         "training.max_steps=3", "data.max_length=512"],
    )
    assert config.training.learning_rate == 1e-4  # YAML reads "1e-4" as a string; the float field takes it
    assert config.model.lora == LoraArgs(enabled=True, r=8)
    assert config.model.options == {"retrieval": "paper"}
    assert (config.training.max_steps, config.data.max_length) == (3, 512)


def test_project_defaults_and_file_values_over_them(minimal, tmp_path):
    config = load_train_config(minimal)
    training = config.training
    assert training.gradient_checkpointing and training.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert (training.remove_unused_columns, training.logging_steps, training.report_to) == (False, 1, [])
    own = write(tmp_path / "own.yaml", {**MINIMAL, "training": {"output_dir": "run", "logging_steps": 5}})
    assert load_train_config(own).training.logging_steps == 5


def test_base_files_merge_and_cycles_are_named(tmp_path):
    write(tmp_path / "base.yaml", {**MINIMAL, "training": {"output_dir": "run", "learning_rate": 0.5, "seed": 3}})
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "training": {"learning_rate": 0.25}})
    config = load_train_config(child)
    assert (config.training.learning_rate, config.training.seed, config.model.start) == (0.25, 3, "ckpt")
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_train_config(tmp_path / "a.yaml")
    write(tmp_path / "orphan.yaml", {"base": "missing.yaml"})
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_train_config(tmp_path / "orphan.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.learning_rat=1", r"unknown key training\.learning_rat .*did you mean training\.learning_rate"),
        ("model.lora.alhpa=8", r"unknown key model\.lora\.alhpa .*did you mean model\.lora\.alpha"),
        ("model.lora.rank=8", r"unknown key model\.lora\.rank in model\.lora; known keys: alpha, dropout"),
        ("data.media=x", r"unknown key data\.media .*did you mean data\.media_root"),
        ("modle.start=x", r"unknown key modle .*did you mean model"),
        ("model.lora.r=eight", r"model\.lora\.r must be int, got 'eight'"),
        ("model.lora.dropout=1.5", r"model\.lora\.dropout must be in \[0, 1\)"),
        ("model.dtype=fp8", r"model\.dtype must be one of"),
        ("data.strict=maybe", r"data\.strict must be bool"),
        ("training.lr_scheduler_type=wavy", r"training: .*wavy"),
        ("resume=3", r"resume must be a string"),
        ("model.family=qwen", r"model\.family must be one of \['flash', 'star', 'streamingvlm'\], got 'qwen'"),
    ],
)
def test_bad_keys_and_values_are_named(minimal, override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(minimal, [override])


@pytest.mark.parametrize(("dtype", "flag"), [("bfloat16", "bf16"), ("float16", "fp16")])
def test_16_bit_weights_under_deepspeed_need_its_mixed_precision(minimal, dtype, flag):
    with pytest.raises(ConfigError, match=rf"model\.dtype {dtype} under DeepSpeed needs training\.{flag}: true"):
        load_train_config(minimal, [f"model.dtype={dtype}", "training.deepspeed=configs/deepspeed/zero2.json"])
    # without DeepSpeed the same weights are accepted (the refusal is DeepSpeed's fp32 path only)
    assert load_train_config(minimal, [f"model.dtype={dtype}"]).model.dtype == dtype


def test_overrides_must_be_key_value():
    for bad in ("training.max_steps", "=3", "training..max_steps=3"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_overrides([bad])
    assert parse_overrides(["a.b=[1, 2]", "c=null", "d="]) == [("a.b", [1, 2]), ("c", None), ("d", "")]


def test_start_point_rules():
    assert ModelArgs(llm="vicuna", vision_tower="clip").start is None
    with pytest.raises(ConfigError, match="no start point"):
        ModelArgs()
    with pytest.raises(ConfigError, match="no start point"):
        ModelArgs(llm="vicuna")
    with pytest.raises(ConfigError, match="either model.start or model.llm"):
        ModelArgs(start="ckpt", llm="vicuna", vision_tower="clip")
    with pytest.raises(ConfigError, match="model.memory only applies"):
        ModelArgs(start="ckpt", memory={"temporal_clusters": 5})
    with pytest.raises(ConfigError, match="model.decoder_trainable cannot be combined with model.lora.enabled"):
        ModelArgs(start="ckpt", decoder_trainable=False, lora={"enabled": True})
    assert ModelArgs(start="ckpt", family="streamingvlm").family == "streamingvlm"
    assert ModelArgs(llm="vicuna", vision_tower="clip", family="star").family == "star"
    with pytest.raises(ConfigError, match="model.family 'flash' cannot start from model.llm"):
        ModelArgs(llm="vicuna", vision_tower="clip", family="flash")


def test_required_fields(tmp_path):
    no_output = write(tmp_path / "a.yaml", {**MINIMAL, "training": {}})
    with pytest.raises(ConfigError, match="training.output_dir is required"):
        load_train_config(no_output)
    no_data = write(tmp_path / "b.yaml", {**MINIMAL, "data": {}})
    with pytest.raises(ConfigError, match="data.data is required"):
        load_train_config(no_data)
    with pytest.raises(ConfigError, match="resume must be 'auto', 'never' or an existing checkpoint folder"):
        load_train_config(tmp_path / "a.yaml", ["training.output_dir=r", "resume=nowhere"])


def test_resolved_config_round_trips(minimal, tmp_path):
    config = load_train_config(minimal, ["model.lora.enabled=true", "training.learning_rate=3e-5",
                                         "training.deepspeed=configs/deepspeed/zero2.json"])
    written = dump_config(config, tmp_path / "run")
    assert written == tmp_path / "run" / CONFIG_FILE
    assert written.read_text().startswith("# flash-vstream train --config ")
    tree = yaml.safe_load(written.read_text())
    assert tree["training"]["learning_rate"] == 3e-5 and tree["model"]["lora"]["enabled"] is True
    assert "gradient_checkpointing" not in tree["training"]  # deprecated aliases are not written twice
    assert config_to_dict(load_train_config(written)) == config_to_dict(config)


def test_every_recipe_resolves(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "train"
    recipes = {p.stem: load_train_config(p) for p in sorted(root.glob("*.yaml"))}
    assert {"star_stage1", "star_stage2", "flash_qwen2vl_lora"} <= set(recipes)
    stage1, stage2, flash = recipes["star_stage1"], recipes["star_stage2"], recipes["flash_qwen2vl_lora"]
    assert stage1.model.trainable_overrides() == {
        "vision_trainable": False, "memory_trainable": True, "projector_trainable": True, "decoder_trainable": False}
    assert (stage1.model.template, stage1.training.learning_rate) == ("plain", 1e-3)
    assert stage2.model.trainable_overrides() == {
        "vision_trainable": False, "memory_trainable": True, "projector_trainable": True, "decoder_trainable": True}
    assert (stage2.model.template, stage2.training.learning_rate) == ("vicuna_v1", 2e-5)
    lora = flash.model.lora
    assert (lora.enabled, lora.r, lora.alpha, lora.dropout, lora.modules_to_save) == (True, 64, 32, 0.05, ["lm_head"])
    training = flash.training
    assert (training.learning_rate, training.adam_beta2, training.weight_decay) == (8e-4, 0.95, 0.1)
    for name in ("star_stage1_debug", "star_debug", "flash_debug"):
        assert recipes[name].training.max_steps > 0 and recipes[name].training.deepspeed is None


def test_train_command_errors_are_one_line(minimal, capsys):
    assert main(["--config", str(minimal), "training.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown key training.bogus" in err
    assert main(["--config", str(minimal.parent / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err


def test_print_config(minimal, capsys):
    assert main(["--config", str(minimal), "--print-config", "training.seed=7"]) == 0
    tree = yaml.safe_load(capsys.readouterr().out)
    assert tree["training"]["seed"] == 7 and tree["model"]["start"] == "ckpt"
