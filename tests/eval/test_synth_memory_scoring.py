"""synth-memory questions and scoring: paired needle streams, and accuracies on a fabricated predictions file."""

import json

import pytest

from flash_vstream.cli import main
from flash_vstream_eval.synth_memory import SynthMemorySettings, make_question_at, make_questions
from flash_vstream_eval.synth_memory_report import results_table, score_synth_memory

SETTINGS = SynthMemorySettings(n=3, seed=7, distances=(10, 100), memories=("star", "fifo"))


def test_a_question_is_the_same_at_every_distance_only_the_needle_moves():
    for index in range(4):
        near, far = make_question_at(7, index, 10), make_question_at(7, index, 1000)
        assert near.question == far.question and near.scene_seed == far.scene_seed
        assert [(o.shape, o.colour, o.x, o.y) for o in near.scene.objects] == \
               [(o.shape, o.colour, o.x, o.y) for o in far.scene.objects]
        for item in (near, far):
            needle = item.scene.objects[0]
            assert 2 <= item.lead <= 10 and item.num_frames == item.lead + item.distance
            shown = [t for t in range(item.num_frames) if needle.visible(t)]
            assert shown == [item.lead, item.lead + 1, item.lead + 2]  # 3 frames, `distance` before the end
            assert item.num_frames - shown[0] == item.distance
            asked = item.question.text.splitlines()[0]  # names the needle by its shape, or else by its colour
            answer = needle.colour if needle.shape in asked else needle.shape
            if item.question.form == "choice":
                answer = "ABCD"[item.question.options.index(answer)]
            assert item.question.answer == answer


def test_questions_come_from_the_held_out_split():
    assert all(q.scene_seed >= 2**31 for q in make_questions(SETTINGS))


def fabricate(right):
    """Records of SETTINGS' questions: right answers where ``right[(memory, distance)]`` lists the index, wrong
    ones elsewhere; an index missing from both lists has no record."""
    questions = {(q.distance, q.index): q for q in make_questions(SETTINGS)}
    records = []
    for (memory, distance), (good, bad) in right.items():
        for index in good + bad:
            q = questions[(distance, index)].question
            if index in good:  # said the way a model might: capitalised, punctuated, with "the"
                said = f"{q.answer.lower()}." if q.form == "choice" else f"The {q.answer.capitalize()}!"
            else:
                said = "Z" if q.form == "choice" else "nothing"
            records.append({"id": f"{memory}/d{distance}/{index:05d}", "memory": memory, "distance": distance,
                            "index": index, "question": q.text, "prediction": said, "visual_tokens": 202})
    return records


RIGHT = {
    ("star", 10): ([0, 1, 2], []),     # 3/3 = 100.0
    ("star", 100): ([1], [0, 2]),      # 1/3 = 33.3
    ("fifo", 10): ([0, 2], [1]),       # 2/3 = 66.7
    ("fifo", 100): ([], [0]),          # 0/1 = 0.0, indices 1 and 2 missing
}


def test_scorer_reproduces_hand_computed_accuracies():
    results = score_synth_memory(fabricate(RIGHT), SETTINGS)
    got = {(m, d): (c["right"], c["n"], c["accuracy"]) for m, cells in results["accuracy"].items()
           for d, c in cells.items()}
    assert got == {("star", "10"): (3, 3, 100.0), ("star", "100"): (1, 3, 33.3),
                   ("fifo", "10"): (2, 3, 66.7), ("fifo", "100"): (0, 1, 0.0)}
    assert results["counts"] == {"scored": 10, "missing": 2}
    assert 100 / 6 <= results["chance"] <= 25.0
    table = results_table(results)
    assert "| star | 202 | 100.0% (3/3) | 33.3% (1/3) |" in table
    assert "| fifo | 202 | 66.7% (2/3) | 0.0% (0/1) |" in table


def test_scorer_refuses_predictions_of_other_settings():
    records = fabricate({("star", 10): ([0], [])})
    records[0]["question"] = "What colour was it?"
    with pytest.raises(ValueError, match="another question"):
        score_synth_memory(records, SETTINGS)
    with pytest.raises(ValueError, match="not a question of this run"):
        score_synth_memory([{**records[0], "index": 9}], SETTINGS)


def test_eval_score_cli_on_a_fabricated_run_folder(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run_config.json").write_text(json.dumps({"benchmark": "synth-memory",
                                                        "settings": SETTINGS.to_dict()}))
    predictions = folder / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in fabricate(RIGHT)))
    assert main(["eval", "score", "--benchmark", "synth-memory", "--predictions", str(predictions),
                 "--out", str(tmp_path / "scored")]) == 0
    out = capsys.readouterr().out
    assert "synth-memory [star, 202 tokens]: d=10 100.0% (n=3), d=100 33.3% (n=3)" in out
    saved = json.loads((tmp_path / "scored" / "results.json").read_text())
    assert saved["accuracy"]["fifo"]["10"]["accuracy"] == 66.7
    (folder / "run_config.json").unlink()
    assert main(["eval", "score", "--benchmark", "synth-memory", "--predictions", str(predictions)]) == 2
    assert "run_config.json is missing" in capsys.readouterr().err
