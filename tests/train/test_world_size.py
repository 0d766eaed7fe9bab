"""ZeRO-3 checkpoints across process counts, on CPU (gloo, the ``deepspeed`` launcher): resume on another count
through DeepSpeed's universal checkpoint, and consolidation into a folder ``load_model`` loads.

The run is the Flash LoRA debug recipe on the tiny Flash model, in fp32, with LoRA dropout 0 (each process draws
its own random numbers, so dropout cannot continue the same stream on another count) and the same global batch on
every count: 1 sample per process on 2 processes, 2 samples on 1. Data: the debug captions (all videos; ZeRO-3 on
several processes refuses text-only samples).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from trainerfixtures import ASSETS, REPO, TRAIN_CONFIGS, step_losses

from flash_vstream.train.config import ConfigError
from flash_vstream.train.consolidate import consolidate, gathered_state_dict
from flash_vstream.train.world_size import convert_to_universal, prepare_resume, read_zero_checkpoint

pytest.importorskip("deepspeed")
LAUNCHER = shutil.which("deepspeed")
ZERO3 = REPO / "configs" / "deepspeed" / "zero3.json"
STEPS, SAVE = 4, 2
"""Every run trains 4 steps and saves at 2 and 4; resumed runs start from checkpoint-2."""


@pytest.fixture(scope="module")
def flash_start(tmp_path_factory) -> Path:
    from flash_vstream.model.tiny_qwen2vl import make_tiny_flash

    return make_tiny_flash(tmp_path_factory.mktemp("tiny") / "flash-qwen2vl", "flash-qwen2vl")


def train(start: Path, out: Path, processes: int, resume: Path | None = None) -> Path:
    """The Flash LoRA debug run under the ``deepspeed`` launcher with ``processes`` processes; returns ``out``."""
    if LAUNCHER is None:
        pytest.skip("the deepspeed launcher is not on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [
        LAUNCHER, "--num_gpus", str(processes), "--master_port", str(port), "--module", "flash_vstream.train.train_cli",
        "--config", str(TRAIN_CONFIGS / "flash_debug.yaml"), f"model.start={start}",
        f"data.data={TRAIN_CONFIGS / 'debug_captions.jsonl'}", f"data.media_root={ASSETS}",
        f"training.output_dir={out}", f"training.max_steps={STEPS}", f"training.save_steps={SAVE}",
        f"training.per_device_train_batch_size={2 // processes}", "model.lora.dropout=0",
        f"training.deepspeed={ZERO3}", *([f"resume={resume}"] if resume else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_process_run(flash_start, tmp_path_factory) -> Path:
    return train(flash_start, tmp_path_factory.mktemp("runs") / "two", processes=2)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_continues(resumed: Path, uninterrupted: Path) -> None:
    """Steps 3-4 of ``resumed`` have the uninterrupted run's losses, and the trained adapters end up equal."""
    got, expected = step_losses(resumed), step_losses(uninterrupted)
    assert [s for s, _ in got] == [3, 4] and [s for s, _ in expected] == [1, 2, 3, 4]
    torch.testing.assert_close([loss for _, loss in got], [loss for _, loss in expected[2:]], atol=1e-5, rtol=0)
    a, b = adapter_weights(resumed), adapter_weights(uninterrupted)
    assert sorted(a) == sorted(b)
    for key in a:  # weights after step 4 depend on Adam's moments and step count from the checkpoint
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_two_process_checkpoint_resumes_on_one_process(flash_start, two_process_run, tmp_path):
    checkpoint = two_process_run / f"checkpoint-{SAVE}"
    saved = read_zero_checkpoint(checkpoint)
    assert (saved.tag, saved.world_size, saved.stage) == (f"global_step{SAVE}", 2, 3)
    before = digests(checkpoint)

    resumed = train(flash_start, tmp_path / "one", processes=1, resume=checkpoint)

    assert_continues(resumed, two_process_run)
    universal = checkpoint / f"global_step{SAVE}_universal"
    assert (checkpoint / "latest_universal").read_text() == universal.name
    # One folder per trained parameter, as DeepSpeed's own gathering names them, and the optimizer's settings.
    gathered = gathered_state_dict(checkpoint)
    names = sorted(p.name for p in (universal / "zero").iterdir() if p.is_dir())
    assert names == sorted(gathered) and (universal / "zero" / "optimizer_state.pt").is_file()
    for name, weight in gathered.items():  # (ZeRO-2's conversion fails exactly this: its fp32 values are wrong)
        flat = torch.load(universal / "zero" / name / "fp32.pt", weights_only=True)
        assert torch.equal(flat.view(-1), weight.view(-1)), name
    after = digests(checkpoint)
    assert {k: v for k, v in after.items() if k in before} == before  # the ZeRO checkpoint is untouched
    assert all(k.startswith(("latest_universal", universal.name)) for k in set(after) - set(before))


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_processes(flash_start, tmp_path):
    one = train(flash_start, tmp_path / "one", processes=1)
    resumed = train(flash_start, tmp_path / "two", processes=2, resume=one / f"checkpoint-{SAVE}")
    assert_continues(resumed, one)


def test_consolidated_two_process_checkpoint_loads_as_the_run_saved_it(two_process_run, tmp_path):
    from flash_vstream import load_model
    from flash_vstream.cli import main

    out = tmp_path / "consolidated"
    assert main(["checkpoint", "consolidate", str(two_process_run / f"checkpoint-{STEPS}"), "--out", str(out)]) == 0
    got = load_model(out, device="cpu", dtype="float32")
    expected = load_model(two_process_run, device="cpu", dtype="float32")  # the run's own merged save
    assert got.family == expected.family == "flash"
    a, b = got.model.state_dict(), expected.model.state_dict()
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    early = consolidate(two_process_run / f"checkpoint-{SAVE}", tmp_path / "early")
    early = load_model(early, device="cpu", dtype="float32").model.state_dict()
    assert any(not torch.equal(early[key], a[key]) for key in a)  # checkpoint-2 holds another model


# ---------------------------------------------------------------------------------------------------------------
# What cannot be resumed: one clear error each (no run needed)
# ---------------------------------------------------------------------------------------------------------------


def zero_folder(root: Path, world_size: int, stage: int) -> Path:
    """A checkpoint folder with the file names DeepSpeed writes (contents are never read)."""
    zero = root / "global_step2"
    zero.mkdir(parents=True)
    (root / "latest").write_text("global_step2")
    (root / "trainer_state.json").write_text('{"global_step": 2}')
    for rank in range(world_size):
        (zero / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
        if stage == 3:
            (zero / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"")
    if stage < 3:
        (zero / "mp_rank_00_model_states.pt").write_bytes(b"")
    return root


def run_args(stage: int | None):
    config = None if stage is None else SimpleNamespace(config={"zero_optimization": {"stage": stage}})
    return SimpleNamespace(hf_deepspeed_config=config, deepspeed=None if stage is None else f"zero{stage}.json")


def test_read_zero_checkpoint_counts_processes_and_stage(tmp_path):
    three = read_zero_checkpoint(zero_folder(tmp_path / "a", 4, 3))
    two = read_zero_checkpoint(zero_folder(tmp_path / "b", 3, 2))
    assert (three.world_size, three.stage, two.world_size, two.stage) == (4, 3, 3, 2)
    assert read_zero_checkpoint(tmp_path) is None  # no 'latest': not a DeepSpeed checkpoint
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "latest").write_text("global_step9")
    with pytest.raises(ValueError, match=r"names 'global_step9', but .* does not exist"):
        read_zero_checkpoint(tmp_path / "c")


def test_same_process_count_resumes_natively(tmp_path):
    args = run_args(3)
    assert prepare_resume(zero_folder(tmp_path, 2, 3), args, world_size=2) is False
    assert "checkpoint" not in args.hf_deepspeed_config.config
    assert not (tmp_path / "latest_universal").exists()


def test_resumes_that_cannot_work_are_refused_naming_the_fix(tmp_path):
    zero3 = zero_folder(tmp_path / "zero3", 2, 3)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError, match=r"saved by 2 process\(es\).*training\.deepspeed is not set: set "
                                          r"training\.deepspeed to .*zero3\.json"):
        prepare_resume(zero3, run_args(None), world_size=1)
    with pytest.raises(ConfigError, match=r"saved without DeepSpeed .* set training\.deepspeed=null"):
        prepare_resume(plain, run_args(3), world_size=1)
    with pytest.raises(ConfigError, match=r"saved with ZeRO-3, but training\.deepspeed zero2\.json runs ZeRO-2: "
                                          r"resume with the stage it was saved with"):
        prepare_resume(zero3, run_args(2), world_size=1)
    # ZeRO-2 universal resumes came back with wrong weights (the step-3 loss jumped by 0.05): refused.
    with pytest.raises(ConfigError, match=r"is a ZeRO-1/2 checkpoint saved by 2 process\(es\), and this run has 1: "
                                          r"only ZeRO-3 .* Resume on 2 process\(es\), or .* consolidate"):
        prepare_resume(zero_folder(tmp_path / "zero2", 2, 2), run_args(2), world_size=1)
    assert prepare_resume(tmp_path / "zero2", run_args(2), world_size=2) is False
    with pytest.raises(ValueError, match=r"is a ZeRO-1/2 checkpoint; only ZeRO-3 checkpoints are converted"):
        convert_to_universal(tmp_path / "zero2")
    assert prepare_resume(plain, run_args(None), world_size=3) is False  # no DeepSpeed: the Trainer's own resume
