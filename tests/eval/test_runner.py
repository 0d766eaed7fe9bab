"""End-to-end runner tests: every benchmark layout, resume after a torn write, sharding, skipped videos,
the run folder's guard against mixing runs, and each rank's own device.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pytest
import torch
from evalfixtures import (
    LETTERS,
    FakeModel,
    egoschema_flash,
    egoschema_lmms_rows,
    egoschema_official,
    fake_checkpoint,
    link_video,
    lvbench_flash,
    lvbench_lmms_rows,
    lvbench_official,
    mlvu_flash,
    mlvu_lmms_rows,
    mlvu_official,
    mvbench_flash,
    mvbench_official,
    videomme_flash,
    videomme_lmms_rows,
    videomme_media,
    videomme_official,
    vstream_root,
    write_json,
    write_jsonl,
)

from flash_vstream.distributed import DistInfo
from flash_vstream_eval.model_api import ModelSpec, rank_device, weights_fingerprint
from flash_vstream_eval.run_folder import RunFolderError
from flash_vstream_eval.runner import run_benchmark

CPU = torch.device("cpu")

CORRECT = {0, 1, 2, 5, 7}


def scripted(n_options: int = 4) -> FakeModel:
    """Right answer for the questions in CORRECT, a wrong letter for the others."""
    replies = {}
    for i in range(10):
        answer = i % n_options
        replies[i] = LETTERS[answer] if i in CORRECT else LETTERS[(answer + 1) % n_options]
    return FakeModel(replies)


def _egoschema_lmms(root, video):
    write_jsonl(root / "MC" / "test.jsonl", egoschema_lmms_rows())
    for i in range(10):
        link_video(video, root / "videos" / f"uid{i}.mp4")
    return root


def _mlvu_lmms(root, video):
    rows = mlvu_lmms_rows()
    write_jsonl(root / "mlvu" / "test.jsonl", rows)
    for row in rows:
        link_video(video, root / row["video_name"])
    return root


def _lvbench_lmms(root, video):
    write_jsonl(root / "lvbench.jsonl", lvbench_lmms_rows())
    for key in "AB":
        link_video(video, root / f"vid{key}.mp4")
    return root


def _videomme_lmms(root, video):
    write_jsonl(root / "videomme" / "test.jsonl", videomme_lmms_rows())
    return videomme_media(root, video)


# (benchmark, writer, options per question, expected headline accuracy)
LAYOUTS = [
    ("egoschema", egoschema_official, 5, 100 * 4 / 6),  # only uid0..uid5 are labelled
    ("egoschema", _egoschema_lmms, 5, 100 * 4 / 6),
    ("egoschema_subset", egoschema_flash, 5, 50.0),
    ("mlvu", mlvu_official, 4, 50.0),
    ("mlvu", _mlvu_lmms, 4, 50.0),
    ("mlvu", mlvu_flash, 4, 50.0),
    ("lvbench", lvbench_official, 4, 50.0),
    ("lvbench", _lvbench_lmms, 4, 50.0),
    ("lvbench", lvbench_flash, 4, 50.0),
    ("mvbench", mvbench_official, 4, 50.0),
    ("mvbench", mvbench_flash, 4, 50.0),
    ("videomme", _videomme_lmms, 4, 50.0),
    ("videomme", videomme_official, 4, 50.0),
    ("videomme", videomme_flash, 4, 50.0),
    ("videomme_sub", _videomme_lmms, 4, 50.0),
    ("videomme_sub", videomme_flash, 4, 50.0),
]


@pytest.mark.parametrize(("bench", "writer", "n_options", "expected"), LAYOUTS,
                         ids=[f"{b}-{w.__name__}" for b, w, _, _ in LAYOUTS])
def test_end_to_end_each_layout(tmp_path, tiny_video, bench, writer, n_options, expected):
    root = writer(tmp_path / "data", tiny_video)
    model = scripted(n_options)
    results = run_benchmark(bench, model, root, tmp_path / "out", "flash-vstream", progress=False)
    assert results["metrics"]["accuracy"] == pytest.approx(expected)
    assert results["counts"]["skipped"] == 0
    assert len(model.calls) == 10
    assert all(call["prefix"] == "Best option: (" for call in model.calls)
    assert all(call["frames"][0] >= 4 for call in model.calls)  # 1 fps clamped to at least 4 frames
    assert (tmp_path / "out" / "results.md").read_text().startswith(f"# {bench} (flash-vstream profile)")


def test_egoschema_full_set_writes_submission(tmp_path, tiny_video):
    root = egoschema_official(tmp_path / "data", tiny_video)
    run_benchmark("egoschema", scripted(5), root, tmp_path / "out", progress=False)
    submission = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert len(submission) == 10
    assert submission["uid3"] == 4 and submission["uid5"] == 0  # wrong (answer+1) and right (5 % 5)
    assert (tmp_path / "out" / "submission.csv").read_text().splitlines()[0] == "q_uid,answer"


def test_videomme_subtitles_reach_the_prompt(tmp_path, tiny_video):
    root = _videomme_lmms(tmp_path / "data", tiny_video)
    model = FakeModel()
    run_benchmark("videomme_sub", model, root, tmp_path / "out", "lmms-eval", limit=4, progress=False)
    first, fourth = model.calls[0]["question"], model.calls[3]["question"]
    assert first.startswith("This video's subtitles are listed below: \nHello there\n")
    assert "Never shown" not in first
    assert fourth.startswith("This video's subtitles are listed below: \nNo subtitles available\n")  # yt1


def test_mvbench_windows_and_frame_folders(tmp_path, tiny_video):
    root = mvbench_official(tmp_path / "data", tiny_video)
    model = FakeModel()
    run_benchmark("mvbench", model, root, tmp_path / "out", "official", progress=False)
    assert {call["frames"][0] for call in model.calls} == {16}
    bounded = model.calls[0]["timestamps"]  # action_sequence, window [0.5, 1.5] s of a 2 s video
    assert bounded.min() >= 0.5 and bounded.max() <= 1.5
    episodic = [c for c in model.calls if any(f"Q{i}:" in c["question"] for i in (7, 8, 9))]
    assert len(episodic) == 3
    assert all(c["frames"][1:] == (16, 16, 3) for c in episodic)  # episodic_reasoning: its 16x16 PNG folders


def test_missing_video_is_skipped_with_reason(tmp_path, tiny_video):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    (root / "videos" / "v3.mp4").unlink()
    (root / "videos" / "v4.mp4").unlink()  # a hard link to the shared video: replace, never write through it
    (root / "videos" / "v4.mp4").write_bytes(b"not a video")
    results = run_benchmark("mlvu", scripted(), root, tmp_path / "out", progress=False)
    reasons = {row["id"]: row["reason"] for row in results["skipped"]}
    assert set(reasons) == {"3", "4"}
    assert reasons["3"] == "missing video: frames/v3.mp4"  # the first place a Flash-layout video is looked for
    assert reasons["4"].startswith("unreadable video: videos/v4.mp4 (")
    assert results["metrics"]["accuracy"] == pytest.approx(100 * 5 / 8)  # 0,1,2,5,7 right of the 8 read

    # The user adds the missing video and mends the broken one: a rerun answers just those two.
    link_video(tiny_video, root / "videos" / "v3.mp4")
    (root / "videos" / "v4.mp4").unlink()
    link_video(tiny_video, root / "videos" / "v4.mp4")
    model = scripted()
    results = run_benchmark("mlvu", model, root, tmp_path / "out", progress=False)
    assert len(model.calls) == 2 and results["counts"]["skipped"] == 0
    assert results["metrics"]["accuracy"] == pytest.approx(100 * 5 / 10)
    merged = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(merged) == 10 and len({r["id"] for r in merged}) == 10


def test_vstream_without_judge_writes_predictions_then_scores_with_one(tmp_path, tiny_video):
    root = vstream_root(tmp_path / "data", tiny_video)
    model = FakeModel({i: f"thing {i}" for i in range(0, 10, 2)}, default="no idea")
    results = run_benchmark("rvs_ego", model, root, tmp_path / "out", progress=False)
    assert results["metrics"] == {} and "judge" in results["note"]
    assert model.calls[0]["timestamps"].max() <= 1.0  # asked at end_time 101.0 -> 1.0 s into the clip

    def judge(question, answer, prediction):
        class Verdict:
            correct = prediction == answer
            score = 5 if correct else 1
        return Verdict()

    results = run_benchmark("rvs_ego", model, root, tmp_path / "out", judge=judge, progress=False)
    assert results["metrics"] == {"accuracy": 50.0, "score": 3.0}
    assert results["breakdowns"]["answer_type"]["action"] == {"accuracy": 100.0, "n": 5, "score": 5.0}


def test_resume_after_kill_mid_write_equals_uninterrupted(tmp_path, tiny_video):
    root = mlvu_official(tmp_path / "data", tiny_video)
    full = run_benchmark("mlvu", scripted(), root, tmp_path / "full", "official", progress=False)

    out = tmp_path / "resumed"
    run_benchmark("mlvu", scripted(), root, out, "official", limit=None, progress=False)
    shard = out / "predictions.rank0-of-1.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])  # 4 done, the 5th torn
    for name in ("predictions.jsonl", "results.json"):
        (out / name).unlink()
    model = scripted()
    resumed = run_benchmark("mlvu", model, root, out, "official", progress=False)
    assert len(model.calls) == 6  # only the unfinished items ran again
    assert resumed == full
    ids = [json.loads(line)["id"] for line in shard.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 10


def test_sharded_ranks_merge_to_the_single_process_result(tmp_path, tiny_video):
    root = lvbench_official(tmp_path / "data", tiny_video)
    single = run_benchmark("lvbench", scripted(), root, tmp_path / "single", progress=False)
    rank0, rank1 = scripted(), scripted()
    out = tmp_path / "dp"
    assert run_benchmark("lvbench", rank0, root, out, progress=False, dist=DistInfo(0, 0, 2, CPU)) is None
    assert [c["question"].split(":")[0][-2:] for c in rank0.calls] == ["Q0", "Q2", "Q4", "Q6", "Q8"]
    merged = run_benchmark("lvbench", rank1, root, out, progress=False, dist=DistInfo(1, 1, 2, CPU))
    assert len(rank1.calls) == 5 and merged == single  # rank 1 finished last, so it merged
    assert single["breakdowns"]["question_type"]["reasoning"]["n"] == 7  # multi-type questions count twice


@dataclass(frozen=True)
class RecordingSpec(ModelSpec):
    """A checkpoint spec whose load records the device it was asked for and answers with a scripted model."""

    devices: list = field(default_factory=list)

    def load(self, device):
        self.devices.append(device)
        return scripted()


def test_each_rank_loads_its_model_onto_its_own_device(tmp_path, tiny_video):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    spec = RecordingSpec(str(fake_checkpoint(tmp_path / "ckpt")))
    for rank in (0, 1):
        run_benchmark("mlvu", spec, root, tmp_path / "out", progress=False,
                      dist=DistInfo(rank, rank, 2, torch.device("cuda", rank)))
    assert spec.devices == [torch.device("cuda", 0), torch.device("cuda", 1)]
    dist = DistInfo(3, 3, 4, torch.device("cuda", 3))
    assert rank_device(None, dist) == rank_device("auto", dist) == rank_device("cuda", dist) == dist.device
    assert rank_device("cpu", dist) == CPU
    with pytest.raises(ValueError, match="not a device"):
        rank_device("gpu", dist)


def test_run_config_records_the_model_identity(tmp_path, tiny_video):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    for i in range(10):
        (root / "videos" / f"v{i}.mp4").unlink()  # every item is skipped, so no model is loaded
    ckpt = fake_checkpoint(tmp_path / "ckpt")
    spec = ModelSpec(str(ckpt), dtype="float16", options={"rope_mode": "reference"})
    results = run_benchmark("mlvu", spec, root, tmp_path / "out", limit=4, max_new_tokens=7, progress=False)
    assert results["counts"]["skipped"] == 4
    config = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert config["model"] == {
        "resolved": str(ckpt.resolve()),
        "config_sha256": hashlib.sha256((ckpt / "config.json").read_bytes()).hexdigest(),
        "weights": weights_fingerprint(ckpt),
        "family": "flash",
        "options": {"rope_mode": "reference"},
        "dtype": "float16",
    }
    assert config["model_given"] == str(ckpt) and config["max_new_tokens"] == 7 and config["profile"] == "flash-vstream"
    assert config["limit"] == 4 and config["data_root"] == str(root.resolve())


def test_rerun_with_retrained_weights_in_the_same_folder_is_refused(tmp_path, tiny_video):
    """A model retrained into the same folder keeps its config.json; its predictions are not the old ones."""
    root = mlvu_flash(tmp_path / "data", tiny_video)
    ckpt = fake_checkpoint(tmp_path / "a")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 8192)  # 2 MiB: the fingerprint reads both ends
    run_benchmark("mlvu", RecordingSpec(str(ckpt)), root, tmp_path / "out", progress=False,
                  dist=DistInfo(0, 0, 1, CPU))
    for offset in (10, weights.stat().st_size - 10):  # a value near the start, then near the end, changed
        data = bytearray(weights.read_bytes())
        data[offset] ^= 1
        weights.write_bytes(bytes(data))
        with pytest.raises(RunFolderError, match=r"model.weights"):
            run_benchmark("mlvu", RecordingSpec(str(ckpt)), root, tmp_path / "out", progress=False)
        data[offset] ^= 1
        weights.write_bytes(bytes(data))
    spec = RecordingSpec(str(ckpt))  # restored: resumes, nothing asked again
    run_benchmark("mlvu", spec, root, tmp_path / "out", progress=False, dist=DistInfo(0, 0, 1, CPU))
    assert spec.devices == []


def test_rerun_with_another_model_is_refused_then_overwrite_starts_fresh(tmp_path, tiny_video, monkeypatch):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    first = RecordingSpec(str(fake_checkpoint(tmp_path / "a")))
    before = run_benchmark("mlvu", first, root, tmp_path / "out", progress=False, dist=DistInfo(0, 0, 1, CPU))
    assert before["metrics"]["accuracy"] == 50.0
    results_file = (tmp_path / "out" / "results.json").read_text()
    # Another checkpoint (its config.json differs) into the same folder: refused, nothing touched.
    other = fake_checkpoint(tmp_path / "b", extra={"hidden_size": 64})
    with pytest.raises(RunFolderError, match=r"model.resolved: .*/a' -> .*/b'; model.config_sha256") as err:
        run_benchmark("mlvu", ModelSpec(str(other)), root, tmp_path / "out", progress=False)
    assert "--overwrite" in str(err.value) and "new --out" in str(err.value)
    assert (tmp_path / "out" / "results.json").read_text() == results_file
    # Same checkpoint, other options or generation budget: refused too, naming what differs.
    with pytest.raises(RunFolderError, match=r"model.options: \{\} -> \{'rope_mode': 'reference'\}"):
        run_benchmark("mlvu", ModelSpec(first.name_or_path, options={"rope_mode": "reference"}), root,
                      tmp_path / "out", progress=False)
    with pytest.raises(RunFolderError, match=r"max_new_tokens: 128 -> 5"):
        run_benchmark("mlvu", first, root, tmp_path / "out", max_new_tokens=5, progress=False)
    # The same checkpoint spelled differently (a relative path) resumes: nothing is asked again.
    same = RecordingSpec(str((tmp_path / "a").relative_to(tmp_path.parent)))
    monkeypatch.chdir(tmp_path.parent)
    assert run_benchmark("mlvu", same, root, tmp_path / "out", progress=False) == before
    assert same.devices == []
    # --overwrite: the old files move aside, the new model answers every question.
    newer = RecordingSpec(str(other))
    fresh = run_benchmark("mlvu", newer, root, tmp_path / "out", overwrite=True, progress=False)
    assert newer.devices == [CPU] and fresh["counts"]["scored"] == 10
    (aside,) = (tmp_path / "out").glob("overwritten-*")
    assert sorted(p.name for p in aside.iterdir()) == [
        "predictions.jsonl", "predictions.rank0-of-1.jsonl", "results.json", "results.md", "run_config.json"]
    assert (aside / "results.json").read_text() == results_file
    config = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert config["model"]["resolved"] == str(other.resolve())


def test_rerun_with_other_settings_or_unknown_predictions_is_refused(tmp_path, tiny_video):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    run_benchmark("mlvu", scripted(), root, tmp_path / "out", limit=2, progress=False)
    with pytest.raises(RunFolderError, match=r"profile: 'flash-vstream' -> 'official'"):
        run_benchmark("mlvu", scripted(), root, tmp_path / "out", "official", limit=2, progress=False)
    (tmp_path / "out" / "run_config.json").unlink()  # predictions whose origin is unknown
    with pytest.raises(RunFolderError, match="predictions but no run_config.json"):
        run_benchmark("mlvu", scripted(), root, tmp_path / "out", limit=2, progress=False)


def test_a_broken_video_shared_by_questions_is_decoded_once(tmp_path, tiny_video):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    rows = json.loads((root / "test_qa.json").read_text())
    for row in rows[:6]:
        row["video_id"] = "shared.mp4"
    write_json(root / "test_qa.json", rows)
    (root / "videos" / "shared.mp4").write_bytes(b"not a video")
    from flash_vstream.video import read_video

    opened = []

    def reader(path, **kwargs):
        opened.append(path.name)
        return read_video(path, **kwargs)

    results = run_benchmark("mlvu", scripted(), root, tmp_path / "out", reader=reader, progress=False)
    assert opened.count("shared.mp4") == 1 and len(opened) == 5
    assert results["counts"]["skipped"] == 6
    assert {row["video"] for row in results["skipped"]} == {"videos/shared.mp4"}
    assert all(row["reason"].startswith("unreadable video: videos/shared.mp4 (") for row in results["skipped"])


def test_vstream_offline_with_judge(tmp_path, tiny_video):
    root = vstream_root(tmp_path / "data", tiny_video)
    model = FakeModel({i: f"thing {i}" for i in (1, 2, 3)}, default="no idea")
    seen = []

    def judge(question, answer, prediction):
        seen.append((question, answer, prediction))

        class Verdict:
            correct = prediction == answer
            score = 4 if correct else 0
        return Verdict()

    results = run_benchmark("vs_ego", model, root, tmp_path / "out", limit=5, judge=judge, progress=False)
    assert results["metrics"] == {"accuracy": 60.0, "score": 2.4}  # q1, q2, q3 right out of 5
    assert seen[1] == ("What did I do 1?", "thing 1", "thing 1")
    assert model.calls[0]["question"] == "Answer the following open-ended question based on the video. What did I do 0?"
