"""The runner end to end with a real ``make-tiny`` model on a synthetic 10-question benchmark in every format.

The tiny model's answers are random, so the check is a restatement: every question is answered once, nothing is
skipped, and the reported accuracy equals the flash-vstream rule (the first A-E in the reply, else the letter
``sha256(id) mod n``) applied by hand to the written predictions. All slow: one fast end-to-end run with a real
model lives in test_eval_cli.py.
"""

from __future__ import annotations

import json

import pytest
from evalfixtures import LETTERS, vstream_root
from test_eval_cli import flash_letter
from test_runner import LAYOUTS

from flash_vstream_eval.benchmarks import get_benchmark
from flash_vstream_eval.runner import run_benchmark

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from flash_vstream import load_model
    from flash_vstream.model.tiny import make_tiny_star

    return load_model(make_tiny_star(tmp_path_factory.mktemp("ckpt") / "star", "star-vicuna", seed=0))


@pytest.mark.parametrize(
    ("bench", "writer"), [(b, w) for b, w, _, _ in LAYOUTS], ids=[f"{b}-{w.__name__}" for b, w, _, _ in LAYOUTS]
)
def test_tiny_model_runs_every_multiple_choice_layout(tmp_path, tiny_video, tiny_model, bench, writer):
    root = writer(tmp_path / "data", tiny_video)
    results = run_benchmark(bench, tiny_model, root, tmp_path / "out", "flash-vstream", progress=False)
    assert results["counts"]["skipped"] == 0
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 10 and len({p["id"] for p in predictions}) == 10
    replies = {p["id"]: p["prediction"] for p in predictions}
    labelled = [item for item in get_benchmark(bench).load_items(root).items if item.answer is not None]
    right = [flash_letter(replies[item.id], item.id, len(item.options)) == LETTERS[item.answer] for item in labelled]
    assert results["counts"]["scored"] == len(labelled)
    assert results["metrics"]["accuracy"] == pytest.approx(100 * sum(right) / len(right), abs=1e-4)  # 4 decimals


@pytest.mark.parametrize("bench", ["vs_ego", "rvs_ego"])
def test_tiny_model_answers_open_ended_vstream(tmp_path, tiny_video, tiny_model, bench):
    root = vstream_root(tmp_path / "data", tiny_video)
    run_benchmark(bench, tiny_model, root, tmp_path / "out", "flash-vstream", progress=False)
    predictions = (tmp_path / "out").glob("predictions*.jsonl")
    lines = [json.loads(line) for path in predictions for line in path.read_text().splitlines()]
    assert lines and all(isinstance(p.get("prediction", p.get("pred")), str) for p in lines)
