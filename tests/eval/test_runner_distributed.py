"""The runner in two real processes joined by a gloo group (what torchrun starts): shards, refusal, overwrite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from evalfixtures import mlvu_flash

EVAL_TESTS = Path(__file__).resolve().parent

RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from evalfixtures import FakeModel
    from flash_vstream.distributed import cleanup_distributed, init_distributed
    from flash_vstream_eval.run_folder import RunFolderError
    from flash_vstream_eval.runner import run_benchmark

    replies = {{i: "ABCD"[i % 4] if i in (0, 1, 2, 5, 7) else "ABCD"[(i + 1) % 4] for i in range(10)}}
    dist = init_distributed()
    model = FakeModel(replies)
    first = run_benchmark("mlvu", model, {root!r}, {out!r}, progress=False)
    try:
        run_benchmark("mlvu", FakeModel(replies), {root!r}, {out!r}, "official", progress=False)
        refusal = None
    except RunFolderError as err:
        refusal = str(err)
    again = run_benchmark("mlvu", FakeModel(replies), {root!r}, {out!r}, "official", overwrite=True, progress=False)
    print(json.dumps({{"rank": dist.rank, "calls": len(model.calls), "first": first, "refusal": refusal,
                      "again": again}}))
    cleanup_distributed()
    """
)


def test_two_ranks_share_the_questions_refuse_together_and_overwrite(tmp_path, tiny_video):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    out = tmp_path / "out"
    script = RANK_SCRIPT.format(tests=str(EVAL_TESTS), root=str(root), out=str(out))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    reports = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [r["rank"] for r in reports] == [0, 1]
    assert [r["calls"] for r in reports] == [5, 5]  # questions 0, 2, 4, ... and 1, 3, 5, ...
    assert (out / "predictions.rank0-of-2.jsonl").is_file() and (out / "predictions.rank1-of-2.jsonl").is_file()
    merged = [r["first"] for r in reports if r["first"] is not None]
    assert merged and all(m["metrics"] == {"accuracy": 50.0} for m in merged)  # the last to finish merged
    # Both ranks refused the other profile (neither hung waiting for the other), naming the difference.
    assert all("profile: 'flash-vstream' -> 'official'" in r["refusal"] for r in reports)
    (aside,) = out.glob("overwritten-*")
    assert (aside / "predictions.rank0-of-2.jsonl").is_file()
    assert json.loads((aside / "run_config.json").read_text())["profile"] == "flash-vstream"
    assert json.loads((out / "run_config.json").read_text())["profile"] == "official"
    assert json.loads((out / "results.json").read_text())["counts"]["scored"] == 10
