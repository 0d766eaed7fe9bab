"""``scripts/bench_stream.py --tiny`` runs every part end to end on the CPU and reports every field needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
POINTS, RATIO_POINTS, REPEATS = [4, 10, 20], [4, 20], 2
SPREAD = {"median", "p10", "p90", "min", "max", "repeats"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench_stream.py", *args], cwd=SCRIPTS, capture_output=True, text=True,
                          timeout=300)


def check_spread(value: dict, repeats: int) -> None:
    assert set(value) == SPREAD and value["repeats"] == repeats
    assert 0 <= value["min"] <= value["p10"] <= value["median"] <= value["p90"] <= value["max"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "stream.json"
    done = run("--tiny", "--repeats", str(REPEATS), "--points", ",".join(map(str, POINTS)),
               "--ratio-points", ",".join(map(str, RATIO_POINTS)), "--live-seconds", "0.5", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_part_of_both_families_is_reported(results):
    assert {"environment", "launch_overhead_us", "dtype", "settings", "star", "flash", "uniform_qwen2vl",
            "ratios"} <= set(results)
    for family, step in (("star", 1), ("flash", 2)):
        part = results[family]
        assert {"build_seconds", "decoder", "ingest", "points", "fill", "live", "offline_compress",
                "peak_gpu_gib"} <= set(part)
        assert part["decoder"]["mode"] == "eager"  # "auto" on the CPU
        check_spread(part["ingest"]["frames_per_s"], REPEATS)
        assert part["ingest"]["frames_dropped"] == 0  # block=True pushes never drop
        assert part["fill"]["frames"] == POINTS[-1] and part["fill"]["frames_per_s"] > 0
        assert [row["frames"] for row in part["points"]] == POINTS
        for row in part["points"]:
            check_spread(row["first_token_ms"], REPEATS)
            check_spread(row["ms_per_token"], REPEATS)
            assert row["frames_seen"] == row["frames"] + REPEATS * step  # one new memory step per repeat
            assert row["prefix_cached"] is True  # the worker prefilled every new version before its question
            assert row["prompt_tokens"] > row["visual_tokens"] > 0 and row["prefix_bytes"] > 0
            assert row["gpu_allocated_gib"] is None and row["gpu_peak_gib"] is None
        tokens = [row["visual_tokens"] for row in part["points"]]
        assert tokens == sorted(tokens) and tokens[0] < tokens[-1]  # short streams: the memory is still filling
        live = part["live"]
        assert live["frames_pushed"] == 15 and live["frames_seen"] + live["frames_dropped"] <= 15  # 30 fps x 0.5 s
        check_spread(live["first_token_ms"], live["questions"])
        assert [row["frames"] for row in part["offline_compress"]] == RATIO_POINTS
    assert results["star"]["points"][0]["device_state_bytes"] == results["star"]["points"][-1]["device_state_bytes"]


def test_uniform_baseline_and_ratios_are_consistent(results):
    uniform = results["uniform_qwen2vl"]["points"]
    assert [(row["frames"], row["sampled_frames"]) for row in uniform] == [(4, 4), (20, 20)]  # budget 64
    by_frames = {row["frames"]: row["first_token_ms"]["median"] for row in uniform}
    for family in ("star", "flash"):
        stream = {row["frames"]: row["first_token_ms"]["median"] for row in results[family]["points"]}
        offline = {row["frames"]: row["first_token_ms"]["median"] for row in results[family]["offline_compress"]}
        rows = results["ratios"][family]
        assert [row["frames"] for row in rows] == RATIO_POINTS
        for row in rows:
            n = row["frames"]
            assert row["stream_first_token_ms"] == stream[n] and row["uniform_first_token_ms"] == by_frames[n]
            assert row["offline_over_stream"] == round(offline[n] / stream[n], 2)
            assert row["uniform_over_stream"] == round(by_frames[n] / stream[n], 2)


def test_bad_point_lists_are_refused_naming_the_flag(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    from bench_stream import parse_args

    for argv, message in ((["--points", "10,100", "--ratio-points", "50"], "--ratio-points [50] must be among"),
                          (["--points", "100,10"], "--points must be increasing")):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(["--tiny", *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert parse_args(["--tiny"]).frame_size == 56 and parse_args([]).frame_size == 448
