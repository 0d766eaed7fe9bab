"""``eval run --benchmark synth-memory`` end to end with the shipped demo model: 2 distances x 2 questions."""

import json

import pytest
import torch

from flash_vstream import load_model
from flash_vstream.cli import main
from flash_vstream.data.demo import demo_model_dir
from flash_vstream.data.scenes import render_frame
from flash_vstream.memory.baselines import budget_memory
from flash_vstream_eval.synth_memory import make_question_at, stream_memories


@pytest.fixture(scope="module")
def demo():
    return load_model(demo_model_dir(), decode="eager")


def test_cached_features_stream_exactly_like_encoding_every_frame(demo):
    """Reusing the features of repeated frames changes nothing: the same read-out as encoding each frame."""
    item = make_question_at(0, 1, 20)
    streamed = stream_memories(demo, item, ("star", "uniform", "fifo"))
    model, processor = demo.model, demo.input_builder.processor
    with torch.inference_mode():
        for name in ("star", "uniform", "fifo"):
            memory = budget_memory(name, model.memory, stream_length=item.num_frames)
            state = memory.init_state()
            for t in range(item.num_frames):
                frame = render_frame(item.scene, t)[None]
                memory.update(state, model.encode_frames(processor(frame)), torch.tensor([float(t)]))
            want, got = memory.read(state), streamed[name][0].read(streamed[name][1])
            assert want.segments == got.segments
            torch.testing.assert_close(got.tokens, want.tokens, rtol=0, atol=0)
            assert streamed[name][1].frames_seen == item.num_frames


def said_right(record: dict) -> bool:
    """The scoring rule restated: a choice reply ("green C") is right by its last word, a short one by all of it."""
    words = record["prediction"].lower().replace(".", " ").split()
    if record["question"].endswith("Answer with the option's letter."):
        return words[-1:] == [record["answer"].lower()]
    return words == record["answer"].lower().split()


def test_eval_run_writes_predictions_and_a_score_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "run", "--benchmark", "synth-memory", "--out", str(out), "--n", "2", "--distances", "10,30",
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "using the built-in demo model" in printed.err
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 4
    assert {(r["memory"], r["distance"], r["index"]) for r in records} == {
        (m, d, i) for m in ("star", "uniform", "spatial", "fifo") for d in (10, 30) for i in (0, 1)}
    tokens = {r["memory"]: r["visual_tokens"] for r in records}
    assert tokens == {"star": 202, "uniform": 202, "spatial": 192, "fifo": 202}
    for r in records:
        assert r["frames"] == r["lead"] + r["distance"]
        if r["memory"] in ("fifo", "spatial", "uniform") and r["distance"] == 10:
            assert r["needle_held"]  # 11-12 frames of a 12-20-frame stream hold the 3 needle frames
        if r["memory"] in ("fifo", "spatial") and r["distance"] == 30:
            assert not r["needle_held"]  # the needle left the newest 12 frames long ago
    results = json.loads((out / "results.json").read_text())
    cells = results["accuracy"]
    assert all(cells[m][d]["n"] == 2 for m in cells for d in ("10", "30"))
    right = sum(said_right(r) for r in records if r["memory"] == "star" and r["distance"] == 10)
    assert cells["star"]["10"]["right"] == right
    assert f"synth-memory [star, 202 tokens]: d=10 {cells['star']['10']['accuracy']:.1f}%" in printed.out

    before = (out / "predictions.jsonl").read_bytes()
    assert main(argv) == 0  # a rerun resumes: nothing left to do, nothing appended
    assert (out / "predictions.jsonl").read_bytes() == before
    assert main([*argv[:-3], "--n", "3", "--no-progress"]) == 2  # other settings: refused
    assert "settings.n: 2 -> 3" in capsys.readouterr().err

    assert main(["eval", "score", "--benchmark", "synth-memory", "--predictions", str(out / "predictions.jsonl"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == cells


def test_star_memory_remembers_a_needle_the_fifo_window_has_lost(tmp_path):
    """The benchmark's finding, held by the shipped model: 200 frames on, STAR still answers, FIFO guesses."""
    out = tmp_path / "run"
    assert main(["eval", "run", "--benchmark", "synth-memory", "--out", str(out), "--n", "12", "--distances", "200",
                 "--memories", "star,fifo", "--choice-rate", "0", "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    right = {m: sum(said_right(r) for r in records if r["memory"] == m) for m in ("star", "fifo")}
    assert not any(r["needle_held"] for r in records if r["memory"] == "fifo")
    assert right["star"] >= 7 and right["fifo"] <= 3, right  # measured: 9 and 0 of 12


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from flash_vstream_eval.synth_memory_report import write_plot

    results = {"settings": {"n": 2, "distances": [10, 100]}, "chance": 22.0, "visual_tokens": {"star": 202},
               "accuracy": {"star": {"10": {"accuracy": 50.0}, "100": {"accuracy": None}}}}
    write_plot(tmp_path / "p.png", results)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_flags_are_one_error_line(capsys):
    for extra, message in ((["--distances", "10,2"], "--distances must be frame counts >= 3"),
                           (["--memories", "star,lifo"], "--memories must be distinct names"),
                           (["--data", "."], "--data does not apply to synth-memory")):
        assert main(["eval", "run", "--benchmark", "synth-memory", "--out", "unused", *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", "run", "--benchmark", "mlvu", "--out", "o", "--data", "."]) == 2
    assert "--benchmark mlvu needs --model" in capsys.readouterr().err
