"""Scoring: from items and prediction records to a results dict, with per-category breakdowns.

Every item ends in one status: ``scored``; ``skipped`` (its video could not be read; the reason is kept);
``unlabelled`` (hidden answer, e.g. EgoSchema's full set, which only goes into the submission file);
``excluded`` (left out of the denominator by the profile: Video-MME official unanswered, lmms-eval MVBench
empty replies); or ``missing`` (no prediction in the file). Accuracies are percentages over ``scored`` items.
A question whose category is a list (LVBench ``question_type``) counts toward each of its values. Annotation
records that could not be read (`items.MalformedRecord`) are counted as ``malformed`` and listed; predictions
for their ids are ignored.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from flash_vstream_eval.benchmarks import Benchmark, get_benchmark
from flash_vstream_eval.items import AnnotationError, Item, MalformedRecord
from flash_vstream_eval.profiles import Profile, Rules, get_profile

__all__ = ["read_predictions", "score_predictions", "score_records", "submission_files"]

Judge = Callable[[str, str, str], Any]
PREDICTION_KEYS = ("prediction", "pred", "response")


def prediction_text(record: dict) -> str | None:
    """The reply in a predictions record (ours use "prediction"; Flash-VStream's files "pred")."""
    for key in PREDICTION_KEYS:
        if key in record:
            return "" if record[key] is None else str(record[key])
    return None


def _score_one(item: Item, record: dict | None, rules: Rules, spec: Benchmark, judge: Judge | None) -> dict:
    row: dict[str, Any] = {"id": item.id, "categories": item.categories}
    if record is None:
        return {**row, "status": "missing"}
    if record.get("skipped"):
        video = {"video": record["video"]} if record.get("video") else {}
        return {**row, "status": "skipped", "reason": str(record["skipped"]), **video}
    reply = prediction_text(record)
    if reply is None:
        raise AnnotationError(f"prediction for {item.id!r} has none of the keys {PREDICTION_KEYS}.")
    if item.answer is None:
        return {**row, "status": "unlabelled"}
    if spec.open_ended:
        if judge is None:
            raise ValueError(
                f"{spec.name} is open-ended: scoring needs a judge (--judge-base-url/--judge-model)."
            )
        verdict = judge(item.question, str(item.answer), reply)
        return {**row, "status": "scored", "correct": bool(verdict.correct), "score": int(verdict.score)}
    verdict = rules.score_mc(reply, item)
    excluded = (rules.exclude == "unanswered" and not verdict.answered) or (
        rules.exclude == "empty_reply" and reply == ""
    )
    return {
        **row,
        "status": "excluded" if excluded else "scored",
        "correct": verdict.correct,
        "extracted": verdict.extracted,
        "fallback": verdict.fallback,
    }


def _percent(numerator: float, denominator: int) -> float | None:
    return round(100.0 * numerator / denominator, 4) if denominator else None


def _group(rows: list[dict], with_score: bool) -> dict[str, Any]:
    group: dict[str, Any] = {"accuracy": _percent(sum(r["correct"] for r in rows), len(rows)), "n": len(rows)}
    if with_score:
        group["score"] = round(sum(r["score"] for r in rows) / len(rows), 4) if rows else None
    return group


def _breakdowns(scored: list[dict], with_score: bool) -> dict[str, dict[str, Any]]:
    buckets: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in scored:
        for key, value in row["categories"].items():
            for single in value if isinstance(value, (list, tuple)) else [value]:
                buckets[key][str(single)].append(row)
    return {
        key: {value: _group(rows, with_score) for value, rows in sorted(groups.items())}
        for key, groups in sorted(buckets.items())
    }


def _aggregate(
    rows: list[dict], rules: Rules, spec: Benchmark, profile: Profile, malformed: Sequence[MalformedRecord]
) -> dict[str, Any]:
    scored = [r for r in rows if r["status"] == "scored"]
    counts = {
        status: sum(r["status"] == status for r in rows)
        for status in ("scored", "skipped", "unlabelled", "excluded", "missing")
    }
    counts["items"] = len(rows)
    counts["malformed"] = len(malformed)
    breakdowns = _breakdowns(scored, spec.open_ended)
    metrics: dict[str, Any] = {"accuracy": _group(scored, spec.open_ended)["accuracy"]}
    if spec.open_ended:
        metrics["score"] = _group(scored, True)["score"]
    if rules.headline == "task_mean":
        tasks = [group["accuracy"] for group in breakdowns.get("task_type", {}).values()]
        metrics["task_mean"] = round(sum(tasks) / len(tasks), 4) if tasks else None
    fallbacks = sum(bool(r.get("fallback")) for r in scored)
    return {
        "benchmark": spec.name,
        "profile": profile.name,
        "headline": rules.headline,
        "metrics": metrics,
        "fallback_rate": _percent(fallbacks, len(scored)),
        "counts": {**counts, "fallback": fallbacks},
        "breakdowns": breakdowns,
        "skipped": skipped_rows(rows),
        "malformed": malformed_rows(malformed),
    }


def skipped_rows(rows: Iterable[dict]) -> list[dict]:
    """``{"id", "reason"[, "video"]}`` of every skipped row or record (records carry ``skipped``, rows ``reason``)."""
    out = []
    for row in rows:
        reason = row.get("reason") if row.get("status") == "skipped" else row.get("skipped")
        if reason:
            entry = {"id": row["id"], "reason": str(reason)}
            if row.get("video"):
                entry["video"] = row["video"]
            out.append(entry)
    return out


def malformed_rows(malformed: Iterable[MalformedRecord]) -> list[dict]:
    """The malformed annotation records as ``{"where", "id", "reason"}`` dicts for ``results.json``."""
    return [{"where": m.where, "id": m.id, "reason": m.reason} for m in malformed]


def score_records(
    benchmark: str | Benchmark,
    items: Sequence[Item],
    records: Iterable[dict],
    profile: str | Profile = "flash-vstream",
    judge: Judge | None = None,
    malformed: Sequence[MalformedRecord] = (),
) -> dict[str, Any]:
    """Score prediction records against items.

    Args:
        benchmark: Benchmark name or spec.
        items: The loaded questions.
        records: ``{"id", "prediction"}`` or ``{"id", "skipped": reason}`` dicts; later records for the same
            id replace earlier ones.
        profile: Scoring profile name or object.
        judge: ``judge(question, answer, prediction) -> verdict`` with ``correct``/``score``; open-ended only.
        malformed: Annotation records the loader skipped; counted and listed, their predictions ignored.

    Returns:
        The results dict (metrics, counts, fallback rate, breakdowns, skipped and malformed records).

    Raises:
        AnnotationError: If a record's id is neither an item's nor a malformed record's (wrong annotations for
        these predictions).
    """
    spec, prof = get_benchmark(benchmark), get_profile(profile)
    if spec.commentary:
        raise ValueError(
            f"{spec.name} is scored pairwise against a reference model's commentary: use `eval score --reference "
            "FILE` or flash_vstream_eval.inf_streams_judge.score_inf_streams."
        )
    rules = prof.for_family(spec.family)
    by_id = {str(r["id"]): r for r in records}
    known = {item.id for item in items} | {m.id for m in malformed if m.id is not None}
    unknown = [i for i in by_id if i not in known]
    if unknown:
        raise AnnotationError(
            f"{len(unknown)} prediction id(s) are not in the {spec.name} annotations "
            f"(first: {unknown[0]!r}); "
            "check --benchmark and --annotations."
        )
    rows = [_score_one(item, by_id.get(item.id), rules, spec, judge) for item in items]
    return _aggregate(rows, rules, spec, prof, malformed)


def read_predictions(path: Path) -> list[dict]:
    """Read a predictions JSONL file (blank lines ignored); errors name the file and line."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{path} line {line_number}: invalid JSON ({err.msg}).") from None
            if not isinstance(record, dict) or "id" not in record:
                raise AnnotationError(f"{path} line {line_number}: expected an object with an 'id'.")
            records.append(record)
    return records


def score_predictions(
    benchmark: str | Benchmark,
    annotations_path: str | Path,
    predictions_path: str | Path,
    profile: str | Profile = "flash-vstream",
    judge: Judge | None = None,
    *,
    strict: bool = False,
) -> dict[str, Any]:
    """Score an existing predictions file without a model.

    Args:
        benchmark: Benchmark name.
        annotations_path: Annotation file or folder in any layout the loader accepts. Media paths are
            resolved relative to its folder but never opened.
        predictions_path: JSONL of ``{"id", "prediction"}`` records.
        profile: Scoring profile.
        judge: Judge callable for open-ended sets.
        strict: Fail on the first malformed annotation record instead of skipping and counting it.

    Raises:
        AnnotationError: For missing files, unusable annotations (with ``strict``: any malformed record, named),
        or predictions that do not belong to these annotations.
    """
    annotations_path = Path(annotations_path)
    root = annotations_path if annotations_path.is_dir() else annotations_path.parent
    spec = get_benchmark(benchmark)
    loaded = spec.load_items(root, str(annotations_path), strict=strict)
    if not Path(predictions_path).is_file():
        raise AnnotationError(f"predictions file {predictions_path} does not exist.")
    records = read_predictions(Path(predictions_path))
    return score_records(spec, loaded.items, records, profile, judge, loaded.malformed)


def submission_files(
    items: Sequence[Item], records: Iterable[dict], profile: str | Profile
) -> dict[str, str]:
    """EgoSchema submission: ``{q_uid: index}`` JSON (official server) and a Kaggle ``q_uid,answer`` CSV.

    Every item with a prediction is included, labelled or not; the letter is read with the profile's
    EgoSchema rule. The flash-vstream and lmms-eval rules fall back to a deterministic guess, so every
    question gets an answer; under ``official`` a reply with no letter is left out of the files.
    """
    rules = get_profile(profile).for_family("egoschema")
    by_id = {str(r["id"]): r for r in records}
    answers: dict[str, int] = {}
    for item in items:
        record = by_id.get(item.id)
        reply = None if record is None or record.get("skipped") else prediction_text(record)
        if reply is None:
            continue
        letter = rules.score_mc(reply, item).extracted
        if letter in "ABCDE" and len(letter) == 1:
            answers[str(item.extra.get("q_uid", item.id))] = "ABCDE".index(letter)
    csv = "q_uid,answer\n" + "".join(f"{uid},{answer}\n" for uid, answer in answers.items())
    return {"submission.json": json.dumps(answers, indent=1) + "\n", "submission.csv": csv}
