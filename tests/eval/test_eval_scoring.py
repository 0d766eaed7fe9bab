"""Scoring predictions files without a model: accuracies computed by hand on small fixtures, per format/profile."""

from __future__ import annotations

import json

import pytest
from evalfixtures import (
    egoschema_flash,
    egoschema_lmms_rows,
    egoschema_official,
    lvbench_official,
    mlvu_flash,
    mlvu_lmms_rows,
    mlvu_official,
    mvbench_official,
    videomme_lmms_rows,
    write_json,
    write_jsonl,
)

from flash_vstream_eval.items import AnnotationError
from flash_vstream_eval.scoring import score_predictions


def preds(path, replies: dict) -> str:
    write_jsonl(path, [{"id": str(k), "prediction": v} for k, v in replies.items()])
    return str(path)


@pytest.fixture()
def video(tmp_path):
    # Scoring never opens media: a placeholder file is enough for the loaders' path checks.
    path = tmp_path / "placeholder.mp4"
    path.write_bytes(b"")
    return path


def test_mlvu_three_layouts_flash_vs_official_m_avg(tmp_path, video):
    # Answers are i % 4. plotQA = questions 0-4, needle = 5-9.
    replies = {0: "A", 1: "B) opt11", 2: "none", 3: "(D)", 4: "C", 5: "B", 6: "C) x", 7: "A", 8: "A", 9: "B"}
    official_root = mlvu_official(tmp_path / "off", video)
    ids = {i: f"{'1_plotQA' if i < 5 else '2_needle'}_{i % 5}" for i in range(10)}
    path = preds(tmp_path / "p_off.jsonl", {ids[i]: r for i, r in replies.items()})
    official = score_predictions("mlvu", official_root, path, "official")
    # Official: text before the first ")" must equal the letter. plotQA: 0 A ok, 1 "B" ok, 2 no, 3 "(D" no,
    # 4 C != A no -> 2/5. needle: 5 B ok, 6 "C" ok, 7 A != D no, 8 A ok, 9 B ok -> 4/5.
    assert official["breakdowns"]["task_type"]["plotQA"]["accuracy"] == 40.0
    assert official["breakdowns"]["task_type"]["needle"]["accuracy"] == 80.0
    assert official["metrics"] == {"accuracy": 60.0, "task_mean": 60.0}

    flash_root = mlvu_flash(tmp_path / "flash", video)
    flash = score_predictions("mlvu", flash_root / "test_qa.json", preds(tmp_path / "p.jsonl", replies))
    # First capital A-E: 0 A ok, 1 B ok, 2 none -> fallback, 3 D ok, 4 C no, 5 B ok, 6 C ok, 7 A no, 8 A ok, 9 B ok.
    from flash_vstream_eval.extractors import fallback_letter

    fallback_right = fallback_letter("2", 4) == "C"
    assert flash["metrics"]["accuracy"] == pytest.approx(10 * (7 + fallback_right))
    assert flash["fallback_rate"] == 10.0 and flash["counts"]["fallback"] == 1

    write_jsonl(tmp_path / "lmms" / "mlvu" / "test.jsonl", mlvu_lmms_rows())
    lmms = score_predictions("mlvu", tmp_path / "lmms" / "mlvu" / "test.jsonl",
                             preds(tmp_path / "p2.jsonl", {i: r for i, r in replies.items()}), "lmms-eval")
    # lmms-eval extractor: 2 "none" -> "", else as flash: plotQA 0,1,3 = 3/5; needle 5,6,8,9 = 4/5; mean 70.
    assert lmms["metrics"] == {"accuracy": 70.0, "task_mean": 70.0}


def test_videomme_official_leaves_unanswered_out(tmp_path):
    write_jsonl(tmp_path / "videomme" / "test.jsonl", videomme_lmms_rows())
    # Answers i % 4: A B C D A B C D A B. Durations: 0-3 short, 4-6 medium, 7-9 long.
    replies = {
        "000-0": "The best answer is A",  # right
        "000-1": "Answer: B",  # official: first [ABCD] is the "A" of "Answer" -> wrong; lmms: B right
        "000-2": "I really cannot tell what is going on in this video at all sorry",  # >10 words, no letter
        "001-3": "D",
        "001-4": "",  # unanswered
        "001-5": "C",
        "002-6": "C",
        "002-7": "B",
        "002-8": "A",
        "003-9": "B",
    }
    annotations = tmp_path / "videomme" / "test.jsonl"
    path = preds(tmp_path / "p.jsonl", replies)
    official = score_predictions("videomme", annotations, path, "official")
    # answered: 8 (000-2 and 001-4 excluded); right: 000-0, 001-3, 002-6, 002-8, 003-9 = 5 -> 62.5
    assert official["metrics"] == {"accuracy": 62.5}
    assert official["counts"]["excluded"] == 2
    assert official["breakdowns"]["duration"]["short"] == {"accuracy": pytest.approx(100 * 2 / 3), "n": 3}
    assert official["breakdowns"]["duration"]["medium"] == {"accuracy": 50.0, "n": 2}
    lmms = score_predictions("videomme", annotations, path, "lmms-eval")
    # all ten count: right 000-0, 000-1, 001-3, 002-6, 002-8, 003-9 = 6
    assert lmms["metrics"] == {"accuracy": 60.0} and lmms["counts"]["excluded"] == 0


def test_lvbench_multi_type_counts_toward_each(tmp_path, video):
    root = lvbench_official(tmp_path, video)
    # types by i % 3: [reasoning], [reasoning, summarization], [summarization]; answers i % 4.
    replies = {str(i): "ABCD"[i % 4] if i in (0, 1, 4, 5) else "ABCD"[(i + 1) % 4] for i in range(10)}
    results = score_predictions("lvbench", root, preds(tmp_path / "p.jsonl", replies), "official")
    # reasoning: i in 0,1,3,4,6,7,9 -> right 0,1,4 = 3/7; summarization: 1,2,4,5,7,8 -> right 1,4,5 = 3/6
    assert results["breakdowns"]["question_type"]["reasoning"] == {"accuracy": pytest.approx(300 / 7), "n": 7}
    assert results["breakdowns"]["question_type"]["summarization"] == {"accuracy": 50.0, "n": 6}
    assert results["metrics"]["accuracy"] == 40.0
    assert results["breakdowns"]["video_type"]["cartoon"]["accuracy"] == 60.0


def test_mvbench_official_per_task_and_mean(tmp_path, video):
    root = mvbench_official(tmp_path, video)
    # action_sequence 0-3, object_shuffle 4-6, episodic_reasoning 7-9; answers i % 4.
    replies = {
        "action_sequence_0": "A) opt00", "action_sequence_1": "b) x", "action_sequence_2": "(C) y",
        "action_sequence_3": "A",
        "object_shuffle_0": "A.", "object_shuffle_1": "", "object_shuffle_2": "B",
        "episodic_reasoning_0": "D", "episodic_reasoning_1": "A", "episodic_reasoning_2": "C",
    }
    path = preds(tmp_path / "p.jsonl", replies)
    official = score_predictions("mvbench", root, path, "official")
    # check_ans: token "a)" in "(a)" ok; "b)" ok; "(c)" ok (tag in token); "a" vs "(d)" no -> 3/4.
    # shuffle (answers A B C): "a" ok; "" counts as right (as published); "b" vs "(c)" no -> 2/3.
    # episodic (answers D A B): "d" ok; "a" ok; "c" no -> 2/3.
    tasks = official["breakdowns"]["task_type"]
    assert tasks["action_sequence"]["accuracy"] == 75.0
    assert tasks["object_shuffle"]["accuracy"] == pytest.approx(200 / 3)
    assert official["metrics"]["accuracy"] == 70.0
    assert official["metrics"]["task_mean"] == pytest.approx((75 + 200 / 3 + 200 / 3) / 3, abs=1e-3)
    lmms = score_predictions("mvbench", root, path, "lmms-eval")
    # lmms: empty reply left out (9 scored); "A) opt00" A ok, "b) x" B ok, "(C) y" C ok, A no, "A." ok, B no,
    # D ok, A ok, C no -> 6/9
    assert lmms["counts"]["excluded"] == 1
    assert lmms["metrics"]["accuracy"] == pytest.approx(600 / 9)


def test_egoschema_subset_scored_rest_unlabelled(tmp_path, video):
    root = egoschema_official(tmp_path / "off", video)
    replies = {f"uid{i}": "ABCDE"[i % 5] if i % 2 == 0 else "E" for i in range(10)}
    results = score_predictions("egoschema", root, preds(tmp_path / "p.jsonl", replies), "official")
    # labelled uid0..uid5 (answers 0..5 % 5): even ones right, uid1 "E" vs B no, uid3 E vs D no, uid5 E vs A no.
    assert results["metrics"] == {"accuracy": 50.0}
    assert results["counts"]["unlabelled"] == 4
    write_jsonl(tmp_path / "lmms" / "Subset" / "test.jsonl", egoschema_lmms_rows()[:6])
    lmms = score_predictions("egoschema_subset", tmp_path / "lmms", preds(tmp_path / "p2.jsonl", {
        "uid0": "(A) opt00", "uid1": "The answer is B.", "uid2": "I would say opt22 is what happens here",
        "uid3": "no clue", "uid4": "E", "uid5": "B"}), "lmms-eval")
    # (A) ok; "B." ok; option text of C (>5 words) ok; uid3 fallback; "E " ok; B vs A no.
    from flash_vstream_eval.extractors import fallback_letter

    assert lmms["metrics"]["accuracy"] == pytest.approx(100 * (4 + (fallback_letter("uid3", 5) == "D")) / 6)
    assert lmms["counts"]["fallback"] == 1
    flash = score_predictions("egoschema_subset", egoschema_flash(tmp_path / "fl", video) / "test_qa.json",
                              preds(tmp_path / "p3.jsonl", {i: "ABCDE"[i % 5] for i in range(5)}))
    assert flash["metrics"]["accuracy"] == 100.0 and flash["counts"]["missing"] == 5  # missing: not scored


def test_flash_vstream_result_files_with_pred_key_are_accepted(tmp_path, video):
    root = mlvu_flash(tmp_path, video)
    write_jsonl(tmp_path / "p.jsonl", [{"id": i, "question": "q", "answer": i % 4, "pred": "ABCD"[i % 4]}
                                       for i in range(10)])
    assert score_predictions("mlvu", root, tmp_path / "p.jsonl")["metrics"]["accuracy"] == 100.0


def test_unknown_prediction_id_and_bad_lines_are_named(tmp_path, video):
    root = mlvu_flash(tmp_path, video)
    with pytest.raises(AnnotationError, match="not in the mlvu annotations"):
        score_predictions("mlvu", root, preds(tmp_path / "p.jsonl", {"nope": "A"}))
    (tmp_path / "bad.jsonl").write_text('{"id": "1", "prediction": "A"}\n{oops\n')
    with pytest.raises(AnnotationError, match=r"bad.jsonl line 2"):
        score_predictions("mlvu", root, tmp_path / "bad.jsonl")


def test_open_ended_needs_a_judge(tmp_path):
    write_json(tmp_path / "vstream" / "test_qa_ego4d.json",
               [{"video_id": "1", "question": "q?", "id": "a", "answer": "x"}])
    with pytest.raises(ValueError, match="needs a judge"):
        score_predictions("vs_ego", tmp_path / "vstream" / "test_qa_ego4d.json",
                          preds(tmp_path / "p.jsonl", {"a": "x"}))


def test_predictions_of_malformed_records_are_counted_not_unknown(tmp_path, video):
    root = mvbench_official(tmp_path, video)
    rows = json.loads((root / "json" / "object_shuffle.json").read_text())
    rows[1]["candidates"] = []  # object_shuffle_1 has no options now
    rows[2]["candidates"] = ["only"]  # object_shuffle_2 has one option (its answer "opt62" is not it)
    rows[2]["answer"] = "only"
    write_json(root / "json" / "object_shuffle.json", rows)
    replies = {f"action_sequence_{i}": "ABCD"[i % 4] for i in range(4)}
    replies |= {"object_shuffle_0": "A", "object_shuffle_1": "B", "object_shuffle_2": "A"}
    results = score_predictions("mvbench", root, preds(tmp_path / "p.jsonl", replies), "official")
    # 9 valid questions: action_sequence 0-3 right, shuffle_0 (answer A) right, shuffle_2 (one option) right,
    # episodic_reasoning 0-2 missing.
    assert results["counts"] == {"scored": 6, "skipped": 0, "unlabelled": 0, "excluded": 0, "missing": 3,
                                 "items": 9, "malformed": 1, "fallback": 0}
    assert results["metrics"]["accuracy"] == 100.0
    (bad,) = results["malformed"]
    # indent=1: "[" on line 1, record 0 on lines 2-12 (4 candidates on lines of their own), record 1 opens on 13
    assert bad["id"] == "object_shuffle_1" and bad["where"].endswith("object_shuffle.json line 13 (record 1)")
    assert bad["reason"] == "answer 'opt51' is not one of the candidates ()."
