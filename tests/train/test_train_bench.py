"""``scripts/bench_train.py --tiny`` runs every case end to end on the CPU and reports what docs/benchmarks.md needs."""

from __future__ import annotations

import json
import subprocess
import sys

from trainerfixtures import REPO


def test_bench_train_tiny_reports_every_case(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "bench_train.py", "--tiny", "--steps", "2", "--warmup", "1", "--out", str(out)],
        cwd=REPO / "scripts", capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert [c["case"] for c in cases] == ["star_stage1", "star_stage2", "flash_lora"]
    for case in cases:
        assert case["step_seconds"]["repeats"] == 2 and case["tokens_per_second"] > 0
        assert 0 < case["trainable_parameters"] <= case["llm_parameters"] * 2
    stage1, stage2, flash = cases
    assert stage1["trainable_parameters"] < stage2["trainable_parameters"]  # stage 1 freezes the LLM
    assert stage1["sequence_tokens"] == 681 + 16 and flash["sequence_tokens"] > 16
