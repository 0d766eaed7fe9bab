"""The ``eval`` command: registration, ``score`` and ``run`` (with real tiny checkpoints), flag errors."""

from __future__ import annotations

import argparse
import json

import pytest
from evalfixtures import egoschema_official, mlvu_flash, videomme_lmms_rows, videomme_media, write_jsonl

from flash_vstream_eval.cli import register


def parse(argv):
    parser = argparse.ArgumentParser(prog="flash-vstream")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_score_command_prints_and_writes_results(tmp_path, tiny_video, capsys):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "prediction": "ABCD"[i % 4] if i < 3 else "D"}
                                       for i in range(10)])
    args = parse(["eval", "score", "--benchmark", "mlvu", "--annotations", str(root / "test_qa.json"),
                  "--predictions", str(tmp_path / "p.jsonl"), "--profile", "lmms-eval", "--out", str(tmp_path / "r")])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["accuracy"] == 50.0  # 0,1,2 right, and 3 and 7 whose answer is D
    assert json.loads((tmp_path / "r" / "results.json").read_text()) == printed


def test_bad_input_gives_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["eval", "run", "--benchmark", "nope", "--model", "m", "--data", ".", "--out", "o"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["eval", "run", "--benchmark", "mlvu", "--model", "m", "--data", ".", "--out", "o", "--limit", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
    args = parse(["eval", "score", "--benchmark", "mlvu", "--annotations", str(tmp_path / "missing.json"),
                  "--predictions", str(tmp_path / "p.jsonl")])
    assert args.func(args) == 2
    assert "missing.json does not exist" in capsys.readouterr().err


def test_vstream_score_needs_judge_key(tmp_path, monkeypatch, capsys):
    for name in ("FLASH_VSTREAM_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    ann = tmp_path / "vstream" / "test_qa_ego4d.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps([{"video_id": "1", "question": "q?", "id": "a", "answer": "x"}]))
    write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prediction": "x"}])
    args = parse(["eval", "score", "--benchmark", "vs_ego", "--annotations", str(ann),
                  "--predictions", str(tmp_path / "p.jsonl"), "--judge-model", "m"])
    assert args.func(args) == 2
    assert "no judge API key" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["star-vicuna", "flash-qwen2vl"])
def test_run_command_with_make_tiny_checkpoint(tmp_path, tiny_video, variant, capsys):
    if variant == "flash-qwen2vl":
        from flash_vstream.model.tiny_qwen2vl import make_tiny_flash as make
        checkpoint = make(tmp_path / "ckpt", seed=0)
    else:
        from flash_vstream.model.tiny import make_tiny_star

        checkpoint = make_tiny_star(tmp_path / "ckpt", variant, seed=0)
    write_jsonl(tmp_path / "data" / "videomme" / "test.jsonl", videomme_lmms_rows())
    root = videomme_media(tmp_path / "data", tiny_video)
    argv = ["eval", "run", "--benchmark", "videomme_sub", "--model", str(checkpoint), "--data", str(root),
            "--out", str(tmp_path / "out"), "--no-progress"]
    args = parse(argv)
    assert args.func(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["counts"]["items"] == 10 and results["counts"]["skipped"] == 0
    assert sorted(results["breakdowns"]["duration"]) == ["long", "medium", "short"]
    predictions = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 10
    # A rerun finds everything done, loads no model, and reproduces the same results.
    assert parse(argv).func(parse(argv)) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results


def test_egoschema_run_through_cli_writes_submission(tmp_path, tiny_video):
    from flash_vstream.model.tiny import make_tiny_star

    checkpoint = make_tiny_star(tmp_path / "ckpt", "star-qwen2", seed=0)
    root = egoschema_official(tmp_path / "data", tiny_video)
    args = parse(["eval", "run", "--benchmark", "egoschema", "--model", str(checkpoint), "--data", str(root),
                  "--out", str(tmp_path / "out"), "--limit", "3", "--no-progress"])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "submission.csv").read_text().startswith("q_uid,answer\n")
