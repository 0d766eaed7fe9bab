"""The runner end to end with a real ``make-tiny`` model on a synthetic 10-question benchmark in every format.

The tiny model's answers are random, so the check is consistency: every question is answered once, nothing is
skipped, and scoring the written predictions without a model reproduces the run's own results.
"""

from __future__ import annotations

import json

import pytest
from evalfixtures import vstream_root
from test_runner import LAYOUTS

from flash_vstream_eval.runner import run_benchmark
from flash_vstream_eval.scoring import score_predictions


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
    rescored = score_predictions(bench, root, tmp_path / "out" / "predictions.jsonl", "flash-vstream")
    assert rescored["metrics"] == results["metrics"]


@pytest.mark.parametrize("bench", ["vs_ego", "rvs_ego"])
def test_tiny_model_answers_open_ended_vstream(tmp_path, tiny_video, tiny_model, bench):
    root = vstream_root(tmp_path / "data", tiny_video)
    run_benchmark(bench, tiny_model, root, tmp_path / "out", "flash-vstream", progress=False)
    predictions = (tmp_path / "out").glob("predictions*.jsonl")
    lines = [json.loads(line) for path in predictions for line in path.read_text().splitlines()]
    assert lines and all(isinstance(p.get("prediction", p.get("pred")), str) for p in lines)
