"""init_distributed: single-process values, a real two-process gloo group on CPU, and bad environments."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from flash_vstream.distributed import DistInfo, init_distributed, is_main_process, print0

DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_torchrun(clean_env, capsys):
    info = init_distributed()
    rank, local_rank, world_size, device = info
    assert isinstance(info, DistInfo)
    assert (rank, local_rank, world_size) == (0, 0, 1)
    assert device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert not torch.distributed.is_initialized()
    assert is_main_process()
    print0("only once")
    assert capsys.readouterr().out == "only once\n"


def test_print0_is_silent_on_other_ranks(clean_env, capsys):
    clean_env.setenv("RANK", "3")
    assert not is_main_process()
    print0("hidden")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 set but RANK, LOCAL_RANK missing"),
        ({"RANK": "0", "LOCAL_RANK": "0"}, "LOCAL_RANK=0 set but WORLD_SIZE missing"),
        ({"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
        ({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "need 0 <= RANK < WORLD_SIZE"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR, MASTER_PORT missing"),
    ],
)
def test_bad_environment_is_one_clear_error(clean_env, env, message):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValueError, match="torchrun") as err:
        init_distributed()
    assert message in str(err.value)
    assert not torch.distributed.is_initialized()


WORKER = textwrap.dedent(
    """
    import json, torch, torch.distributed as dist
    from flash_vstream.distributed import init_distributed, is_main_process
    first = init_distributed()
    again = init_distributed()  # idempotent: the group is joined once
    value = torch.tensor([float(first.rank + 1)])
    dist.all_reduce(value)
    print(json.dumps({"info": [first.rank, first.local_rank, first.world_size, str(first.device)],
                      "again": [again.rank, again.world_size], "sum": value.item(),
                      "backend": dist.get_backend(), "main": is_main_process()}))
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_gloo_group_on_cpu():
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    for rank, result in enumerate(outputs):
        assert result["info"] == [rank, rank, 2, "cpu"]
        assert result["again"] == [rank, 2]
        assert result["sum"] == 3.0  # 1 + 2
        assert result["backend"] == "gloo"
        assert result["main"] == (rank == 0)
