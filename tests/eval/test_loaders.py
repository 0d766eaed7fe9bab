"""Loaders: every layout yields the same items; parquet equals JSON; bad input gets one clear error."""

from __future__ import annotations

import json

import pytest
from evalfixtures import (
    egoschema_lmms_rows,
    egoschema_official,
    lvbench_lmms_rows,
    lvbench_official,
    mlvu_flash,
    mlvu_lmms_rows,
    mlvu_official,
    mvbench_official,
    videomme_lmms_rows,
    vstream_root,
    write_json,
    write_jsonl,
    write_parquet,
)

from flash_vstream_eval.benchmarks import get_benchmark
from flash_vstream_eval.items import AnnotationError, resolve_dataset_dir


def essentials(items):
    return [(i.question, i.options, i.answer, i.categories.get("task_type")) for i in items]


def test_mlvu_layouts_agree(tmp_path, tiny_video):
    official = get_benchmark("mlvu").load(mlvu_official(tmp_path / "a", tiny_video), None)
    flash = get_benchmark("mlvu").load(mlvu_flash(tmp_path / "b", tiny_video), None)
    write_jsonl(tmp_path / "c" / "mlvu" / "test.jsonl", mlvu_lmms_rows())
    lmms = get_benchmark("mlvu").load(tmp_path / "c", None)
    assert len(official) == 10  # the generation task file is ignored
    assert essentials(official) == essentials(flash) == essentials(lmms)
    assert official[0].video == "video/1_plotQA/v0.mp4" and not official[0].frames_dir
    assert flash[0].source == "flash" and flash[0].question_text.startswith("Q0: what happens?\nOptions:\n(A)")


@pytest.mark.parametrize(("bench", "rows", "relative"), [
    ("egoschema", egoschema_lmms_rows, "MC/test-00000-of-00001"),
    ("mlvu", mlvu_lmms_rows, "mlvu/test-00000-of-00001"),
    ("lvbench", lvbench_lmms_rows, "test-00000-of-00001"),
    ("videomme", videomme_lmms_rows, "videomme/test-00000-of-00001"),
])
def test_parquet_equals_json(tmp_path, bench, rows, relative):
    pytest.importorskip("pyarrow")
    write_jsonl(tmp_path / "j" / f"{relative}.jsonl", rows())
    write_parquet(tmp_path / "p" / f"{relative}.parquet", rows())
    from_json = get_benchmark(bench).load(tmp_path / "j", None)
    from_parquet = get_benchmark(bench).load(tmp_path / "p", None)
    assert len(from_json) == 10
    assert from_json == from_parquet


def test_lvbench_official_equals_lmms(tmp_path, tiny_video):
    official = get_benchmark("lvbench").load(lvbench_official(tmp_path / "a", tiny_video), None)
    write_jsonl(tmp_path / "b" / "rows.jsonl", lvbench_lmms_rows())
    lmms = get_benchmark("lvbench").load(tmp_path / "b", None)
    assert [(i.id, i.options, i.answer, i.categories["question_type"]) for i in official] == [
        (i.id, i.options, i.answer, i.categories["question_type"]) for i in lmms
    ]
    assert official[1].categories == {"video_type": "cartoon", "question_type": ["reasoning", "summarization"]}


def test_egoschema_hidden_labels_and_subset(tmp_path, tiny_video):
    root = egoschema_official(tmp_path, tiny_video)
    full = get_benchmark("egoschema").load(root, None)
    subset = get_benchmark("egoschema_subset").load(root, None)
    assert [i.answer for i in full] == [0, 1, 2, 3, 4, 0, None, None, None, None]
    assert [i.id for i in subset] == [f"uid{i}" for i in range(6)]
    assert full[0].options == ("opt00", "opt01", "opt02", "opt03", "opt04")


def test_mvbench_windows_frame_folders_and_unknown_task(tmp_path, tiny_video):
    root = mvbench_official(tmp_path, tiny_video)
    items = {item.id: item for item in get_benchmark("mvbench").load(root, None)}
    sequence, shuffle = items["action_sequence_0"], items["object_shuffle_0"]
    episodic = items["episodic_reasoning_0"]
    assert (sequence.start, sequence.end, sequence.video) == (0.5, 1.5, "video/star/Charades_segment/m0.mp4")
    assert (shuffle.start, shuffle.end) == (None, None)  # unbounded task
    assert episodic.frames_dir and episodic.frames_fps == 3.0 and episodic.video.endswith("frames_fps3_hq/ep7")
    write_json(root / "json" / "made_up_task.json", [])
    with pytest.raises(AnnotationError, match="'made_up_task' is not an MVBench task"):
        get_benchmark("mvbench").load(root, None)


def test_videomme_subtitles_and_official_grouped_layout(tmp_path):
    rows = videomme_lmms_rows()
    (tmp_path / "subtitle").mkdir()
    (tmp_path / "subtitle" / "yt0.srt").write_text("")
    write_jsonl(tmp_path / "videomme" / "test.jsonl", rows)
    items = get_benchmark("videomme_sub").load(tmp_path, None)
    assert items[0].subtitles == "subtitle/yt0.srt" and items[3].subtitles is None
    assert items[0].categories == {"duration": "short", "domain": "Knowledge", "sub_category": "History",
                                   "task_type": "OCR"}
    grouped = [{"video_id": "000", "duration_category": "short", "video_category": "Knowledge",
                "video_subcategory": "History", "videoID": "yt0",
                "questions": [{"question_id": r["question_id"], "task_type": r["task_type"],
                               "question": r["question"], "choices": r["options"], "answer": r["answer"]}
                              for r in rows[:3]]}]
    write_json(tmp_path / "g" / "results.json", grouped)
    official = get_benchmark("videomme").load(tmp_path, str(tmp_path / "g" / "results.json"))
    assert [(i.id, i.options, i.answer, i.categories) for i in official] == [
        (i.id, i.options, i.answer, i.categories) for i in items[:3]]


def test_vstream_realtime_window(tmp_path, tiny_video):
    root = vstream_root(tmp_path, tiny_video)
    realtime = get_benchmark("rvs_ego").load(root, None)
    offline = get_benchmark("vs_ego").load(root, None)
    assert (realtime[0].start, realtime[0].end) == (0.0, 1.0)  # asked at 101 s, clip starts at 100 s
    assert realtime[0].frames_dir and realtime[0].video == "vstream-realtime/ego4d_frames_online/000000"
    assert offline[0].video == "vstream/ego4d_videos/000000.mp4" and offline[0].start is None
    assert offline[1].answer == "thing 1" and offline[1].categories == {"answer_type": "object"}


def test_malformed_records_name_file_and_line_when_strict(tmp_path, tiny_video):
    root = mlvu_flash(tmp_path, tiny_video)
    rows = [{"id": 0, "video_id": "v0.mp4", "question": "Q?\n(A) a\n(B) b", "answer": 0},
            {"id": 1, "video_id": "v1.mp4", "question": "Q?\n(A) a\n(B) b"}]
    write_json(root / "test_qa.json", rows)  # indent=1: record 1 opens on line 8
    with pytest.raises(AnnotationError, match=r"test_qa.json line 8 \(record 1\): missing field\(s\) \['answer'\]"):
        get_benchmark("mlvu").load(root, None)
    rows[1]["answer"] = 7
    write_json(root / "test_qa.json", rows)
    with pytest.raises(AnnotationError, match=r"record 1\): answer 7 is out of range for 2 options"):
        get_benchmark("mlvu").load_items(root, strict=True)
    (root / "test_qa.json").write_text('[{"id": 1,\n "x": }]')
    with pytest.raises(AnnotationError, match="test_qa.json line 2 column"):
        get_benchmark("mlvu").load_items(root)  # a file that does not parse is unusable even when tolerant
    write_jsonl(tmp_path / "lv" / "video_info.meta.jsonl", [{"key": "k", "qa": [{"uid": "1", "question": "q"}]}])
    with pytest.raises(AnnotationError, match=r"video_info.meta.jsonl line 1 qa 0: missing field\(s\) \['answer'\]"):
        get_benchmark("lvbench").load(tmp_path / "lv", None)


def test_one_option_is_a_valid_question_and_malformed_records_are_skipped(tmp_path, tiny_video):
    root = mlvu_flash(tmp_path, tiny_video)
    rows = [{"id": i, "video_id": f"v{i}.mp4", "question": f"Q{i}?\n(A) a\n(B) b", "answer": 1} for i in range(4)]
    rows[1] = {"id": 1, "video_id": "v1.mp4", "question": "Q1?\n(A) only", "answer": 0}  # one option
    rows[2] = {"id": 2, "video_id": "v2.mp4", "question": "Q2? no options at all", "answer": 0}
    rows.append({"id": 4, "video_id": "v4.mp4", "question": "Q4?\n(A) a", "answer": 3})  # out of range
    write_json(root / "test_qa.json", rows)
    loaded = get_benchmark("mlvu").load_items(root)
    assert [item.id for item in loaded.items] == ["0", "1", "3"]
    assert loaded.items[1].options == ("only",) and loaded.items[1].answer == 0
    path = root / "test_qa.json"
    lines = path.read_text().splitlines()
    # indent=1 puts each record's "{" on the line above its "id" field (the 1-based number is that 0-based index)
    opening = {k: lines.index(f'  "id": {k},') for k in (2, 4)}
    assert all(lines[n - 1] == " {" for n in opening.values())
    assert [(m.id, m.where) for m in loaded.malformed] == [
        ("2", f"{path} line {opening[2]} (record 2)"),
        ("4", f"{path} line {opening[4]} (record 4)"),
    ]
    assert loaded.malformed[0].reason == "could not find the '(A) ...' option lines in the question."
    assert loaded.malformed[1].reason == "answer 3 is out of range for 1 options."
    with pytest.raises(AnnotationError, match=r"test_qa.json line \d+ \(record 2\): could not find"):
        get_benchmark("mlvu").load_items(root, strict=True)


def test_too_many_options_and_bad_jsonl_lines_are_malformed(tmp_path):
    rows = videomme_lmms_rows()
    rows[2]["options"] = [f"{'ABCDEFGHI'[k]}. o{k}" for k in range(9)]
    path = tmp_path / "videomme" / "test.jsonl"
    write_jsonl(path, rows)
    path.write_text(path.read_text() + "{not json\n")
    loaded = get_benchmark("videomme").load_items(tmp_path)
    assert len(loaded.items) == 9
    assert [(m.where, m.id) for m in loaded.malformed] == [(f"{path} line 3", "000-2"), (f"{path} line 11", None)]
    assert loaded.malformed[0].reason == "9 options; a multiple-choice question has 1 to 8 (letters A-H)."
    assert loaded.malformed[1].reason.startswith("invalid JSON")


def test_one_bad_question_of_an_lvbench_video_line_keeps_the_others(tmp_path, tiny_video):
    root = lvbench_official(tmp_path, tiny_video)
    path = root / "video_info.meta.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    del lines[1]["qa"][2]["answer"]
    write_jsonl(path, lines)
    loaded = get_benchmark("lvbench").load_items(root)
    assert [item.id for item in loaded.items] == ["0", "1", "2", "3", "4", "5", "6", "8", "9"]
    assert [(m.where, m.id) for m in loaded.malformed] == [(f"{path} line 2 qa 2", "7")]


def test_media_paths_never_leave_the_root(tmp_path):
    rows = mlvu_lmms_rows()
    rows[4]["video_name"] = "../../outside.mp4"
    write_jsonl(tmp_path / "mlvu" / "test.jsonl", rows)
    with pytest.raises(AnnotationError, match=r"test.jsonl line 5: media path .* leaves the data root"):
        get_benchmark("mlvu").load(tmp_path, None)
    rows[4]["video_name"] = "/etc/passwd"
    write_jsonl(tmp_path / "mlvu" / "test.jsonl", rows)
    with pytest.raises(AnnotationError, match=r"test.jsonl line 5: media path .* is absolute"):
        get_benchmark("mlvu").load(tmp_path, None)


def test_duplicate_ids_and_empty_sets_are_rejected(tmp_path):
    rows = lvbench_lmms_rows()
    rows[3]["uid"] = rows[2]["uid"]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(AnnotationError, match="item id '2' appears twice"):
        get_benchmark("lvbench").load(tmp_path, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="no MLVU annotations under"):
        get_benchmark("mlvu").load(tmp_path / "empty", None)
    write_jsonl(tmp_path / "bad" / "rows.jsonl", [{"uid": "1", "question": "no options"}])
    with pytest.raises(AnnotationError, match=r"no valid questions found \(1 malformed record\(s\), first: .*line 1"):
        get_benchmark("lvbench").load_items(tmp_path / "bad")


def test_dataset_ids_resolve_locally_old_and_new_org(tmp_path, monkeypatch):
    (tmp_path / "lmms-eval" / "Video-MME").mkdir(parents=True)
    assert resolve_dataset_dir("lmms-lab/Video-MME", tmp_path) == tmp_path / "lmms-eval" / "Video-MME"
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "datasets--lmms-lab--egoschema" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_dataset_dir("lmms-eval/egoschema", tmp_path) == snapshot
    with pytest.raises(AnnotationError, match="Nothing is downloaded"):
        resolve_dataset_dir("lmms-eval/LVBench", tmp_path)
