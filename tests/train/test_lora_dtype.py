"""Dtypes of a bf16 Flash LoRA run: under DeepSpeed every trained parameter has one dtype (ZeRO-3 flattens them into
one buffer and refuses a mix at engine start); without DeepSpeed the adapters are fp32 (the optimizer steps them).

The DeepSpeed cases run in a subprocess (one process, gloo on CPU, the environment a launcher would set): a live
ZeRO-3 config makes ``from_pretrained`` partition the model and join a process group, which must not leak into the
other tests of this process.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from trainerfixtures import ASSETS, REPO, TRAIN_CONFIGS, step_losses

from flash_vstream.train.config import load_train_config
from flash_vstream.train.start import build_start

ZERO3 = REPO / "configs" / "deepspeed" / "zero3.json"
BF16 = ("training.bf16=true", "model.dtype=bfloat16")

PROBE = """
import json, sys
from flash_vstream.distributed import cleanup_distributed, init_distributed
from flash_vstream.train.config import load_train_config
from flash_vstream.train.start import build_start
from flash_vstream.train.world_size import join_deepspeed

init_distributed()
for dtype in ("bfloat16", "float32"):  # ZeRO-3 loads the model in the DeepSpeed config's dtype either way
    config = load_train_config(sys.argv[1], [*sys.argv[2:], f"model.dtype={dtype}"])
    join_deepspeed(config.training)  # as run_training does: from_pretrained then partitions the ZeRO-3 model
    model = build_start(config.model).model
    trained = {n: str(p.dtype).removeprefix("torch.") for n, p in model.named_parameters() if p.requires_grad}
    partitioned = sum(hasattr(p, "ds_id") for p in model.parameters())
    print("PROBE " + json.dumps({"dtype": dtype, "trained": trained, "partitioned": partitioned}))
cleanup_distributed()
"""
"""Prints, per ``model.dtype``, the dtype of every trainable parameter after ``build_start`` (and how many
parameters are ZeRO-3 partitioned)."""


@pytest.fixture(scope="module")
def flash_start(tmp_path_factory):
    from flash_vstream.model.tiny_qwen2vl import make_tiny_flash

    return make_tiny_flash(tmp_path_factory.mktemp("tiny") / "flash-qwen2vl", "flash-qwen2vl")


def overrides(start, out, *extra: str) -> list[str]:
    return [f"model.start={start}", f"data.data={TRAIN_CONFIGS / 'debug_chat.jsonl'}", f"data.media_root={ASSETS}",
            f"training.output_dir={out}", *extra]


def one_process(args: list[str]) -> str:
    """Run ``args`` as rank 0 of a 1-process DeepSpeed job on CPU; returns its stdout (fails with its output)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_without_deepspeed_bf16_adapters_are_fp32(flash_start, tmp_path):
    from transformers.integrations.deepspeed import deepspeed_config

    config = load_train_config(TRAIN_CONFIGS / "flash_debug.yaml", overrides(flash_start, tmp_path, *BF16))
    assert deepspeed_config() is None, "an earlier test left a DeepSpeed config alive"
    trained = {n: p.dtype for n, p in build_start(config.model).model.named_parameters() if p.requires_grad}
    adapters = {n: d for n, d in trained.items() if ".lora_" in n}
    assert len(adapters) == 32  # A and B of 7 linears x 2 layers plus the 2 merger linears
    assert set(adapters.values()) == {torch.float32}
    assert {d for n, d in trained.items() if n not in adapters} == {torch.bfloat16}  # the lm_head copy: model.dtype


@pytest.mark.skipif(not __import__("importlib").util.find_spec("deepspeed"), reason="needs deepspeed")
def test_zero3_bf16_trained_parameters_share_one_dtype(flash_start, tmp_path):
    out = one_process(["-c", PROBE, str(TRAIN_CONFIGS / "flash_debug.yaml"), *overrides(
        flash_start, tmp_path, "training.bf16=true", f"training.deepspeed={ZERO3}")])
    probes = [json.loads(line.removeprefix("PROBE ")) for line in out.splitlines() if line.startswith("PROBE ")]
    assert [probe["dtype"] for probe in probes] == ["bfloat16", "float32"]
    for probe in probes:
        assert probe["partitioned"] > 0  # the ZeRO-3 load path, as in a real run
        trained = probe["trained"]
        assert sum(".lora_" in n for n in trained) == 32 and any("modules_to_save" in n for n in trained)
        assert set(trained.values()) == {"bfloat16"}, probe


@pytest.mark.skipif(not __import__("importlib").util.find_spec("deepspeed"), reason="needs deepspeed")
def test_zero3_bf16_flash_lora_trains_and_merges(flash_start, tmp_path):
    from safetensors.torch import load_file

    from flash_vstream import load_model
    from flash_vstream.train.consolidate import gathered_state_dict

    out = tmp_path / "run"
    one_process(["-m", "flash_vstream.train.train_cli", "--config", str(TRAIN_CONFIGS / "flash_debug.yaml"),
                 *overrides(flash_start, out, *BF16, "training.max_steps=3", "training.save_steps=3",
                            f"training.deepspeed={ZERO3}")])
    losses = step_losses(out)
    assert [s for s, _ in losses] == [1, 2, 3]
    assert all(math.isfinite(loss) for _, loss in losses) and len({loss for _, loss in losses}) == 3

    # DeepSpeed kept fp32 master weights of every trained parameter; the saved adapter is them in bf16.
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    master = gathered_state_dict(out / "checkpoint-3")
    assert len(master) == len(adapter) == 33 and {v.dtype for v in master.values()} == {torch.float32}
    for name, weight in adapter.items():
        key = name.replace(".weight", ".default.weight").replace("lm_head.", "lm_head.modules_to_save.")
        assert weight.dtype == torch.bfloat16 and torch.equal(weight, master[key].to(torch.bfloat16)), name

    # The merged model is the start model plus scale * B @ A on the adapted linears and the trained lm_head.
    settings = json.loads((out / "adapter" / "adapter_config.json").read_text())
    scale = settings["lora_alpha"] / settings["r"]
    merged = load_model(out, device="cpu", dtype="bfloat16")
    assert merged.family == "flash"
    got = merged.model.state_dict()
    base = load_model(flash_start, device="cpu", dtype="bfloat16").model.state_dict()
    prefix = "base_model.model."
    lm_head = adapter[f"{prefix}lm_head.weight"]
    assert torch.equal(got["lm_head.weight"], lm_head) and not torch.equal(lm_head, base["lm_head.weight"])
    q = "model.language_model.layers.0.self_attn.q_proj"
    a, b = (adapter[f"{prefix}{q}.lora_{x}.weight"].float() for x in "AB")
    assert b.abs().sum() > 0  # B starts at zero: it trained
    expected = base[f"{q}.weight"].float() + scale * (b @ a)
    torch.testing.assert_close(got[f"{q}.weight"].float(), expected, atol=2e-2, rtol=2e-2)
    frozen = "model.visual.blocks.0.attn.qkv.weight"
    assert torch.equal(got[frozen], base[frozen])
