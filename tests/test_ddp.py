"""Every family trains under DDP without ``find_unused_parameters``: 2 gloo processes on CPU, one tiny model each.

The worker (``tests/ddp_worker.py``) runs two steps per family; DDP raises on the second if a trainable parameter
received no gradient in the first (a 1-frame clip, where the STAR memory's attention is not in the algorithm).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flash_vstream.families import tiny_variants

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    variants = sorted(tiny_variants())
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(WORKER), str(out), *variants,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("variant", sorted(tiny_variants()))
def test_ddp_step_without_find_unused_parameters(ddp_results, variant):
    rank0, rank1 = (results[variant] for results in ddp_results)
    for results in (rank0, rank1):
        assert results["ungraded"] == [], f"trainable parameters without a gradient: {results['ungraded']}"
        assert results["num_trainable"] > 0
    # The ranks saw different clips, so their losses differ, but DDP averaged the gradients: they are equal.
    assert rank0["losses"] != rank1["losses"]
    assert rank0["grad_checksum"] == pytest.approx(rank1["grad_checksum"], rel=1e-6, abs=1e-9)
