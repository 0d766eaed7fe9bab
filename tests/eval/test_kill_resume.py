"""A real ``kill -9`` in the middle of a run: the rerun finishes with no duplicate and the same results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from evalfixtures import mlvu_flash

from flash_vstream_eval.runner import run_benchmark

EVAL_TESTS = Path(__file__).resolve().parent
REPLIES = {0: "A", 1: "B", 2: "D", 3: "D", 4: "A", 5: "B", 6: "C", 7: "A", 8: "A", 9: "B"}

SLOW_RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from evalfixtures import SlowModel
    from flash_vstream_eval.runner import run_benchmark

    run_benchmark("mlvu", SlowModel({replies!r}, delay=0.4), {root!r}, {out!r}, "flash-vstream", progress=False)
    """
)


def _shard_lines(out: Path) -> list[dict]:
    lines = []
    for path in out.glob("predictions.rank*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a torn tail, if the kill landed mid-write
    return lines


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, tiny_video):
    from evalfixtures import FakeModel, SlowModel

    root = mlvu_flash(tmp_path / "data", tiny_video)
    out = tmp_path / "killed"
    script = SLOW_RUN.format(tests=str(EVAL_TESTS), replies=REPLIES, root=str(root), out=str(out))
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_shard_lines(out)) < 3:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    done_before = len(_shard_lines(out))
    assert 3 <= done_before < 10, "the kill should land in the middle of the run"

    resumed_model = SlowModel(REPLIES)  # the same model (class) as the killed run, or the folder refuses it
    resumed = run_benchmark("mlvu", resumed_model, root, out, "flash-vstream", progress=False)
    assert len(resumed_model.calls) <= 10 - done_before + 1  # at most the item in flight is redone
    merged = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in merged) == sorted({p["id"] for p in merged}) and len(merged) == 10

    clean = run_benchmark("mlvu", FakeModel(REPLIES), root, tmp_path / "clean", "flash-vstream", progress=False)
    assert resumed["metrics"] == clean["metrics"]
