"""Crash-safe predictions files: torn tails are cut off, whole records kept, nothing duplicated."""

from __future__ import annotations

import json

from flash_vstream_eval.predictions import PredictionWriter, recover_predictions


def test_torn_tail_is_truncated_and_appending_continues(tmp_path):
    path = tmp_path / "p.jsonl"
    with PredictionWriter(path) as writer:
        writer.write({"id": "1", "prediction": "A\nwith newline"})
        writer.write({"id": "2", "prediction": "B"})
    whole = path.read_bytes()
    for tail in (b'{"id": "3", "predic', b'{"id": "3"}', b"\xff\xfe", b'["no id"]\n'):
        path.write_bytes(whole + tail)
        assert [r["id"] for r in recover_predictions(path)] == ["1", "2"]
        assert path.read_bytes() == whole
    with PredictionWriter(path) as writer:
        writer.write({"id": "3", "prediction": "C"})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["1", "2", "3"]


def test_missing_file_reads_as_empty(tmp_path):
    assert recover_predictions(tmp_path / "none.jsonl") == []


def test_reading_another_ranks_shard_leaves_its_tail_alone(tmp_path):
    path = tmp_path / "p.jsonl"
    with PredictionWriter(path) as writer:
        writer.write({"id": "1", "prediction": "A"})
    in_flight = path.read_bytes() + b'{"id": "2", "predic'  # the owner is half way through a write
    path.write_bytes(in_flight)
    assert [r["id"] for r in recover_predictions(path, truncate=False)] == ["1"]
    assert path.read_bytes() == in_flight
