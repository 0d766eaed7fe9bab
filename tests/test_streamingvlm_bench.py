"""``scripts/bench_streamingvlm.py --tiny`` runs every policy on the CPU and reports what docs/benchmarks.md needs."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPREAD = {"median", "p10", "p90", "min", "max", "repeats"}


def test_tiny_run_reports_every_policy(tmp_path):
    out = tmp_path / "svlm.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "bench_streamingvlm.py", "--tiny", "--seconds", "4", "--segment", "2",
                           "--out", str(out)], cwd=ROOT / "scripts", capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"environment", "dtype", "streamingvlm", "full", "sliding", "recompute"} <= set(results)
    for policy in ("streamingvlm", "full", "sliding", "recompute"):
        part = results[policy]
        assert part["settings"]["policy"] == policy and part["seconds_run"] == 4 and part["oom_at_second"] is None
        assert [(s["from_second"], s["to_second"]) for s in part["segments"]] == [(0, 2), (2, 4)]
        for segment in part["segments"]:
            for key in ("wall_ms", "vision_ms", "prefill_ms", "speak_ms", "ms_per_token", "video_seconds_per_second"):
                assert set(segment[key]) == SPREAD and segment[key]["repeats"] == 2
        chunks = part["chunks"]
        assert all(c["tokens"] >= 1 and c["wall_ms"] >= c["speak_ms"] for c in chunks)
    full = [c["cache_tokens"] for c in results["full"]["chunks"]]
    kept = [c["cache_tokens"] for c in results["streamingvlm"]["chunks"]]
    assert full == sorted(full) and max(kept) < full[-1]  # full attention grows; the windows bound the method
    assert [c["cache_tokens"] for c in results["recompute"]["chunks"]] == kept  # same windows, recomputed
