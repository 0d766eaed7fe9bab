"""Real-time VStream-QA: every RVS question asked on a live ``StreamSession`` at its annotated time.

A tiny random STAR model (one frame per memory step) streams synthetic RVS-Ego frame folders at 1 fps. The
frames an answer saw must be exactly the frames at or before its time (``#{k : k <= t}`` for frames at
``k`` seconds, all of them for a time past the end); every question is answered once; a resumed run replays only
the videos with questions left and answers like the uninterrupted one; ``offline`` (``--offline``) is the old
windowed path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from evalfixtures import make_frames, write_json

from flash_vstream.cli import main
from flash_vstream_eval.benchmarks import get_benchmark
from flash_vstream_eval.realtime import shard_by_video, video_groups
from flash_vstream_eval.runner import run_benchmark

CLIP_START = 100.0
FRAMES = {"000000": 6, "000001": 4}  # frames per video, at 0, 1, 2, ... s
TIMES = {"000000": [2.5, 0.0, 10.0, 1.0, 4.0, 0.5], "000001": [3.0, 1.0, 1.5]}  # clip seconds


def rvs_root(root: Path) -> Path:
    rows = [
        {"video_id": video, "question": f"What did I do {i}?", "id": f"{video}-{i}", "answer": f"thing {i}",
         "answer_type": "action", "start_time": CLIP_START, "end_time": CLIP_START + t}
        for video, times in TIMES.items() for i, t in enumerate(times)
    ]
    realtime = root / "vstream-realtime"
    write_json(realtime / "test_qa_ego4d.json", rows)
    write_json(realtime / "rvs_ego.json", [{"video_id": v, "original_video": "x", "start_time": CLIP_START,
                                            "end_time": CLIP_START + n} for v, n in FRAMES.items()])
    for video, n in FRAMES.items():
        make_frames(realtime / "ego4d_frames_online" / video, frames=n, first=0)
    return root


def expected_frames(record_id: str) -> int:
    video, i = record_id.rsplit("-", 1)
    t = TIMES[video][int(i)]
    return sum(k <= t for k in range(FRAMES[video]))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from flash_vstream.model.tiny import make_tiny_star

    return make_tiny_star(tmp_path_factory.mktemp("ckpt") / "star", "star-vicuna", seed=0)


@pytest.fixture(scope="module")
def tiny_model(checkpoint):
    from flash_vstream import load_model

    return load_model(checkpoint)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model) -> tuple[Path, dict]:
    """One uninterrupted real-time run: (data root, predictions by id)."""
    base = tmp_path_factory.mktemp("full")
    root = rvs_root(base / "data")
    results = run_benchmark("rvs_ego", tiny_model, root, base / "out", progress=False)
    assert results["counts"] == {"items": 9, "predicted": 9, "skipped": 0, "malformed": 0}
    assert json.loads((base / "out" / "run_config.json").read_text())["realtime"] is True
    return root, {r["id"]: r for r in read_jsonl(base / "out" / "predictions.jsonl")}


def test_each_answer_saw_exactly_the_frames_up_to_its_time(full_run):
    _, records = full_run
    assert sorted(records) == sorted(f"{v}-{i}" for v, times in TIMES.items() for i in range(len(times)))
    for record_id, record in records.items():
        want = expected_frames(record_id)
        assert (record["frames"], record["frames_pushed"]) == (want, want), record
        assert record["stream_time"] == want - 1  # the newest frame in the memory is at (frames - 1) s
        assert record["asked_at"] == TIMES[record_id.split("-")[0]][int(record_id.rsplit("-", 1)[1])]
        assert isinstance(record["prediction"], str)


def test_every_question_is_answered_once_in_time_order(full_run):
    root, _ = full_run
    lines = read_jsonl(root.parent / "out" / "predictions.rank0-of-1.jsonl")  # the shard, in asking order
    assert len(lines) == 9 and len({r["id"] for r in lines}) == 9
    for video, times in TIMES.items():
        assert [r["asked_at"] for r in lines if r["id"].startswith(video)] == sorted(times)


def test_resume_replays_only_unfinished_videos_and_matches_the_full_run(full_run, tiny_model, tmp_path):
    source, records = full_run
    root = tmp_path / "data"
    shutil.copytree(source, root)
    out = tmp_path / "out"
    run_benchmark("rvs_ego", tiny_model, root, out, progress=False)
    shard = out / "predictions.rank0-of-1.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    # Video 000000 finished (6 lines), video 000001 one of three, the next line torn by a kill.
    shard.write_text("".join(lines[:7]) + lines[7][:10])
    shutil.rmtree(root / "vstream-realtime" / "ego4d_frames_online" / "000000")  # a replay would skip it
    results = run_benchmark("rvs_ego", tiny_model, root, out, progress=False)
    assert results["counts"]["skipped"] == 0 and results["counts"]["predicted"] == 9
    appended = read_jsonl(shard)[7:]
    assert sorted(r["id"] for r in appended) == ["000001-0", "000001-2"]
    merged = {r["id"]: r for r in read_jsonl(out / "predictions.jsonl")}
    assert merged == records


def test_missing_video_skips_its_questions_and_a_rerun_answers_them(full_run, tiny_model, tmp_path):
    source, records = full_run
    root = tmp_path / "data"
    shutil.copytree(source, root)
    frames = root / "vstream-realtime" / "ego4d_frames_online" / "000001"
    shutil.move(frames, tmp_path / "aside")
    results = run_benchmark("rvs_ego", tiny_model, root, tmp_path / "out", progress=False)
    assert results["counts"]["skipped"] == 3
    assert {row["id"] for row in results["skipped"]} == {"000001-0", "000001-1", "000001-2"}
    shutil.move(tmp_path / "aside", frames)
    results = run_benchmark("rvs_ego", tiny_model, root, tmp_path / "out", progress=False)
    assert results["counts"]["skipped"] == 0
    assert {r["id"]: r for r in read_jsonl(tmp_path / "out" / "predictions.jsonl")} == records


def test_offline_flag_evaluates_each_window_the_old_way(full_run, checkpoint, tmp_path, capsys):
    source, _ = full_run
    argv = ["eval", "run", "--benchmark", "rvs_ego", "--model", str(checkpoint), "--data", str(source),
            "--no-progress", "--max-new-tokens", "8", "--out"]
    assert main([*argv, str(tmp_path / "offline"), "--offline"]) == 0
    offline = read_jsonl(tmp_path / "offline" / "predictions.jsonl")
    assert json.loads((tmp_path / "offline" / "run_config.json").read_text())["realtime"] is False
    assert len(offline) == 9 and all(set(r) == {"id", "prediction", "frames"} for r in offline)
    assert all(r["frames"] >= 4 for r in offline)  # the offline 1 fps plan samples at least 4 frames
    # The folder records the mode: the same folder cannot be resumed in the other mode.
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "offline")]) == 2
    assert "realtime" in capsys.readouterr().err


def test_video_groups_and_shards(tmp_path):
    items = get_benchmark("rvs_ego").load(rvs_root(tmp_path / "data"), None)
    groups = video_groups(items)
    assert [[i.id for i in g] for g in groups] == [
        ["000000-1", "000000-5", "000000-3", "000000-0", "000000-4", "000000-2"],
        ["000001-1", "000001-2", "000001-0"],
    ]
    assert [i.id for i in shard_by_video(items, 1, 2)] == [i.id for i in groups[1]]
    assert shard_by_video(items, 0, 3) + shard_by_video(items, 1, 3) + shard_by_video(items, 2, 3) == [
        item for group in groups for item in group
    ]


def flash_expected(record_id: str) -> tuple[int, int]:
    """``(frames in the memory, frames pushed)`` for a Flash model, which folds frames in pairs.

    A question is asked before the first frame after its time, once the memory holds a pair; a question past the
    last frame is asked after the stream finished (an odd last frame is then padded, and counted as seen).
    """
    video, i = record_id.rsplit("-", 1)
    t, n = TIMES[video][int(i)], FRAMES[video]
    if t >= n - 1:
        return n, n
    pushed = max(sum(k <= t for k in range(n)), 2)
    return pushed - pushed % 2, pushed


def test_flash_family_answers_from_whole_frame_pairs(tmp_path):
    from flash_vstream import load_model
    from flash_vstream.model.tiny_qwen2vl import make_tiny_flash

    model = load_model(make_tiny_flash(tmp_path / "flash", seed=0))
    root = rvs_root(tmp_path / "data")
    results = run_benchmark("rvs_ego", model, root, tmp_path / "out", progress=False, max_new_tokens=4)
    assert results["counts"]["predicted"] == 9
    records = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert {r["id"]: (r["frames"], r["frames_pushed"]) for r in records} == {
        r["id"]: flash_expected(r["id"]) for r in records
    }
