"""The train command under launchers, on CPU: DeepSpeed ZeRO-2 (one process, the RANK/... environment the launcher
would set), ``torchrun`` with 2 gloo processes against 1 process with the same global batch, and (slow) the
``deepspeed`` launcher with 2 processes.

DeepSpeed is sdist-only and builds its ops just in time: the first run here compiles its CPU all-reduce op
(``deepspeed_shm_comm``, about 30 s; cached in ``TORCH_EXTENSIONS_DIR``). ``configs/deepspeed/*.json`` use the
Trainer's own torch AdamW (no optimizer block), so no fused-Adam op is compiled.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainerfixtures import REPO, make_tiny_models, recipe_config, step_losses

from flash_vstream import load_model
from flash_vstream.train.trainer import run_training

DEEPSPEED_CONFIGS = REPO / "configs" / "deepspeed"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_args(config, recipe: str = "star_debug") -> list[str]:
    """The command line that rebuilds ``config``'s run from ``configs/train/<recipe>.yaml``."""
    return [
        "--config", str(REPO / "configs" / "train" / f"{recipe}.yaml"),
        f"model.start={config.model.start}", f"data.data={config.data.data}",
        f"data.media_root={config.data.media_root}", f"training.output_dir={config.training.output_dir}",
        f"training.max_steps={config.training.max_steps}", f"training.save_steps={config.training.save_steps}",
        f"training.per_device_train_batch_size={config.training.per_device_train_batch_size}",
    ]


def run_cli(prefix: list[str], args: list[str], env: dict | None = None, timeout: int = 300):
    done = subprocess.run(
        [*prefix, *args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_deepspeed_configs_are_complete():
    names = sorted(p.name for p in DEEPSPEED_CONFIGS.glob("*.json"))
    assert names == ["zero1.json", "zero2.json", "zero2_offload.json", "zero3.json", "zero3_offload.json"]
    for name in names:
        config = json.loads((DEEPSPEED_CONFIGS / name).read_text())
        assert config["_comment"].startswith("flash-vstream train --config ") and name in config["_comment"]
        assert int(name[4]) == config["zero_optimization"]["stage"]
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert config[key] == "auto", (name, key)
        offload = "offload" in name
        assert ("offload_optimizer" in config["zero_optimization"]) == offload == ("optimizer" in config)
    assert json.loads((DEEPSPEED_CONFIGS / "zero3.json").read_text())["zero_optimization"][
        "stage3_gather_16bit_weights_on_model_save"] is True


def test_deepspeed_zero2_on_cpu_matches_the_plain_run(tiny, tmp_path):
    pytest.importorskip("deepspeed")
    plain = run_training(recipe_config("star_debug", tiny, tmp_path / "plain", "training.max_steps=4",
                                       "training.save_steps=4"))
    ds = recipe_config("star_debug", tiny, tmp_path / "zero2", "training.max_steps=4", "training.save_steps=4")
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}
    run_cli([sys.executable, "-m", "flash_vstream.train.train_cli"],
            [*cli_args(ds), f"training.deepspeed={DEEPSPEED_CONFIGS / 'zero2.json'}"], env)
    checkpoint = tmp_path / "zero2" / "checkpoint-4"
    assert (checkpoint / "latest").read_text().strip() == "global_step4"  # written by the DeepSpeed engine
    assert sorted(p.name for p in (checkpoint / "global_step4").iterdir())  # ZeRO-2 optimizer shards
    got, expected = step_losses(tmp_path / "zero2"), step_losses(plain.output_dir)
    assert [s for s, _ in got] == [1, 2, 3, 4]
    torch.testing.assert_close([loss for _, loss in got], [loss for _, loss in expected], atol=1e-5, rtol=0)
    a = load_model(tmp_path / "zero2", device="cpu", dtype="float32").model.state_dict()
    b = load_model(plain.output_dir, device="cpu", dtype="float32").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_torchrun_two_gloo_processes_match_one_process(tiny, tmp_path):
    # The chat data hold text-only samples: on their rank the projector and memory get no gradient.
    one = run_training(recipe_config("star_debug", tiny, tmp_path / "one", "training.max_steps=4",
                                     "training.per_device_train_batch_size=2", "training.save_steps=4"))
    two = recipe_config("star_debug", tiny, tmp_path / "two", "training.max_steps=4",
                        "training.per_device_train_batch_size=1", "training.save_steps=4")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port()), "-m", "flash_vstream.train.train_cli"]
    run_cli(torchrun, cli_args(two), {"OMP_NUM_THREADS": "1"})
    got, expected = step_losses(tmp_path / "two"), step_losses(one.output_dir)
    assert [s for s, _ in got] == [1, 2, 3, 4]  # rank 0 alone writes metrics.jsonl
    torch.testing.assert_close([loss for _, loss in got], [loss for _, loss in expected], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_deepspeed_launcher_two_processes_match_one_process(tiny, tmp_path):
    pytest.importorskip("deepspeed")
    launcher = shutil.which("deepspeed")
    if launcher is None:
        pytest.skip("the deepspeed launcher is not on PATH")
    # Every sample has a video (ZeRO-2 refuses text-only samples on several processes, see the next test).
    captions = REPO / "configs" / "train" / "debug_captions.jsonl"
    extra = ("training.max_steps=4", "training.save_steps=4", f"data.data={captions}")
    one = run_training(recipe_config("star_debug", tiny, tmp_path / "one", *extra,
                                     "training.per_device_train_batch_size=2"))
    two = recipe_config("star_debug", tiny, tmp_path / "two", *extra, "training.per_device_train_batch_size=1")
    prefix = [launcher, "--num_gpus", "2", "--master_port", str(free_port()), "--module",
              "flash_vstream.train.train_cli"]
    run_cli(prefix, [*cli_args(two), f"training.deepspeed={DEEPSPEED_CONFIGS / 'zero2.json'}"],
            {"DS_ACCELERATOR": "cpu"})
    got, expected = step_losses(tmp_path / "two"), step_losses(one.output_dir)
    torch.testing.assert_close([loss for _, loss in got], [loss for _, loss in expected], atol=1e-5, rtol=0)
    assert Path(tmp_path / "two" / "checkpoint-4" / "global_step4").is_dir()


def test_zero2_and_zero3_on_several_processes_refuse_text_only_samples(tiny, tmp_path):
    from flash_vstream.train.config import ConfigError
    from flash_vstream.train.data import Media, Sample, Turn
    from flash_vstream.train.trainer import check_zero_data

    turns = (Turn("user", "hi"), Turn("assistant", "hello"))
    video = Sample("v", (Media("frames", tmp_path, 3),), turns, "rows.jsonl", 1)
    text = Sample("t", (), turns, "rows.jsonl", 2)
    for name, stage in (("zero1.json", 1), ("zero2.json", 2), ("zero3.json", 3)):
        args = recipe_config("star_debug", tiny, tmp_path / name, f"training.deepspeed={DEEPSPEED_CONFIGS / name}")
        check_zero_data([video, text], args.training, world_size=1)  # one process: nothing to disagree with
        check_zero_data([video, video], args.training, world_size=2)
        if stage == 1:
            check_zero_data([video, text], args.training, world_size=2)  # ZeRO-1 reduces in a fixed order
        else:
            with pytest.raises(ConfigError, match=rf"ZeRO-{stage} on 2 processes, and 1 of the 2 samples are "
                                                  r"text-only \(e\.g\. rows\.jsonl:2\)"):
                check_zero_data([video, text], args.training, world_size=2)


@pytest.mark.slow
def test_deepspeed_zero1_two_processes_with_text_only_samples_match_one_process(tiny, tmp_path):
    pytest.importorskip("deepspeed")
    launcher = shutil.which("deepspeed")
    if launcher is None:
        pytest.skip("the deepspeed launcher is not on PATH")
    extra = ("training.max_steps=4", "training.save_steps=4")
    one = run_training(recipe_config("star_debug", tiny, tmp_path / "one", *extra,
                                     "training.per_device_train_batch_size=2"))
    two = recipe_config("star_debug", tiny, tmp_path / "two", *extra, "training.per_device_train_batch_size=1")
    prefix = [launcher, "--num_gpus", "2", "--master_port", str(free_port()), "--module",
              "flash_vstream.train.train_cli"]
    run_cli(prefix, [*cli_args(two), f"training.deepspeed={DEEPSPEED_CONFIGS / 'zero1.json'}"],
            {"DS_ACCELERATOR": "cpu"})
    got, expected = step_losses(tmp_path / "two"), step_losses(one.output_dir)
    torch.testing.assert_close([loss for _, loss in got], [loss for _, loss in expected], atol=1e-5, rtol=0)


def test_zero3_refuses_a_star_model_whose_memory_trains(tiny, tmp_path):
    from flash_vstream.train.config import ConfigError
    from flash_vstream.train.start import build_start
    from flash_vstream.train.trainer import check_zero_model

    # The models are built first: a live ZeRO-3 TrainingArguments makes from_pretrained shard (and join a group).
    trained = build_start(recipe_config("star_debug", tiny, tmp_path / "a").model)
    frozen = build_start(recipe_config("star_debug", tiny, tmp_path / "b", "model.memory_trainable=false").model)
    zero3 = recipe_config("star_debug", tiny, tmp_path / "c", f"training.deepspeed={DEEPSPEED_CONFIGS / 'zero3.json'}")
    with pytest.raises(ConfigError, match="ZeRO-3, which cannot shard the STAR memory's attention"):
        check_zero_model(trained, zero3.training)
    check_zero_model(frozen, zero3.training)


@pytest.mark.slow
def test_deepspeed_zero3_flash_lora_on_cpu_trains_and_merges(tiny, tmp_path):
    pytest.importorskip("deepspeed")
    config = recipe_config("flash_debug", tiny, tmp_path / "zero3", "training.max_steps=3", "training.save_steps=3")
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}
    args = [*cli_args(config, "flash_debug"), f"training.deepspeed={DEEPSPEED_CONFIGS / 'zero3.json'}"]
    run_cli([sys.executable, "-m", "flash_vstream.train.train_cli"], args, env)
    assert [s for s, _ in step_losses(tmp_path / "zero3")] == [1, 2, 3]
    assert load_model(tmp_path / "zero3", device="cpu").family == "flash"  # the merged model
