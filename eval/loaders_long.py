"""Loaders for the long-video multiple-choice benchmarks: EgoSchema, MLVU (dev) and LVBench.

Each loader accepts the benchmark's official files, the Hugging Face layouts lmms-eval reads (parquet or JSON
records) and Flash-VStream's ``test_qa.json``; the layout is recognised per record from its fields. Formats
are described in ``reference/benchmarks-and-ecosystem.md`` §1.1-1.3 and in ``docs/eval.md``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from flash_vstream_eval.formats import (
    annotation_files,
    check_unique_ids,
    flash_item,
    letter_to_index,
    split_options,
    strip_letter,
)
from flash_vstream_eval.items import AnnotationError, Item, find_media, read_json, read_records, require

__all__ = ["load_egoschema", "load_lvbench", "load_mlvu"]


# --- EgoSchema

EGOSCHEMA_FULL = ("all_qa.json", "test_qa.json", "questions.json", "MC/*.parquet", "MC/*.json*", "*.parquet")
EGOSCHEMA_SUBSET = ("test_qa.json", "questions.json", "Subset/*.parquet", "Subset/*.json*", "*.parquet")


def _egoschema_media(root: Path, uid: str, where: str) -> tuple[str, bool]:
    return find_media(root, [f"videos/{uid}.mp4", f"frames/{uid}", f"{uid}.mp4", f"videos/{uid}"], where)


def _egoschema_item(record: dict, where: str, root: Path, answers: dict) -> Item:
    if "q_uid" in record:  # official questions.json; labels in subset_answers.json
        require(record, ["q_uid", "question", "option 0"], where)
        uid = str(record["q_uid"])
        options = tuple(str(record[f"option {i}"]) for i in range(5) if f"option {i}" in record)
        answer = letter_to_index(answers[uid], len(options), where) if uid in answers else None
        question, source = str(record["question"]), "official"
    elif "video_idx" in record:  # lmms-eval parquet: options "A. text"
        require(record, ["video_idx", "question", "option"], where)
        uid = str(record["video_idx"])
        options = tuple(strip_letter(str(option)) for option in record["option"])
        raw = record.get("answer")
        answer = None if raw in (None, "") else letter_to_index(raw, len(options), where)
        question, source = str(record["question"]), "lmms"
    else:
        require(record, ["video_id"], where)
        uid = str(record["video_id"])
        media = [f"frames/{uid}", f"videos/{uid}.mp4", f"{uid}.mp4"]
        return replace(flash_item(record, where, root, ("duration",), media), extra={"q_uid": uid})
    video, is_dir = _egoschema_media(root, uid, where)
    return Item(
        id=uid,
        video=video,
        question=question,
        options=options,
        answer=answer,
        categories={},
        frames_dir=is_dir,
        source=source,
        extra={"q_uid": uid},
    )


def load_egoschema(root: Path, source: str | None = None, *, subset_only: bool = False) -> list[Item]:
    """Load EgoSchema questions (500 labelled ones when ``subset_only``; otherwise every question found).

    Items without a label (the hidden full set) have ``answer=None``: they are not scored but go into the
    submission file.
    """
    files = annotation_files(root, source, EGOSCHEMA_SUBSET if subset_only else EGOSCHEMA_FULL, "EgoSchema")
    items: list[Item] = []
    for path in files:
        answers_path = path.parent / "subset_answers.json"
        answers = read_json(answers_path) if answers_path.is_file() else {}
        for where, record in read_records(path):
            items.append(_egoschema_item(record, where, Path(root), answers))
    if subset_only:
        items = [item for item in items if item.answer is not None]
    return check_unique_ids(items, files[0])


# --- MLVU

MLVU_PATTERNS = ("test_qa.json", "json/*.json", "mlvu/*.parquet", "*.parquet", "mlvu/*.json*", "*.jsonl")
# MLVU's generation tasks are not part of the multiple-choice score.
_MLVU_GENERATION_TASKS = ("sub_scene", "summary")


def _mlvu_official(record: dict, where: str, root: Path, task_file: str, index: int) -> Item:
    require(record, ["video", "question", "candidates", "answer"], where)
    options = tuple(str(c) for c in record["candidates"])
    if record["answer"] not in options:
        raise AnnotationError(f"{where}: answer {record['answer']!r} is not one of the candidates {options}.")
    task = str(record.get("question_type") or task_file.split("_", 1)[-1])
    name = str(record["video"])
    video, is_dir = find_media(root, [f"video/{task_file}/{name}", f"video/{name}", name], where)
    return Item(
        id=f"{task_file}_{index}",
        video=video,
        question=str(record["question"]),
        options=options,
        answer=options.index(record["answer"]),
        categories={"task_type": task},
        frames_dir=is_dir,
        source="official",
        extra={"duration": record.get("duration")},
    )


def _mlvu_lmms(record: dict, where: str, root: Path, index: int) -> Item:
    require(record, ["video_name", "question", "answer", "task_type"], where)
    stem, parsed = split_options(str(record["question"]))
    options = tuple(str(c) for c in record["candidates"]) if record.get("candidates") else parsed
    name = str(record["video_name"])
    video, is_dir = find_media(root, [name, f"video/{name}", f"videos/{name}"], where)
    return Item(
        id=str(record.get("question_id", index)),
        video=video,
        question=stem,
        options=options,
        answer=letter_to_index(record["answer"], len(options), where),
        categories={"task_type": str(record["task_type"])},
        frames_dir=is_dir,
        question_text=str(record["question"]),
        source="lmms",
    )


def load_mlvu(root: Path, source: str | None = None) -> list[Item]:
    """Load MLVU-dev multiple-choice questions from any of the three layouts."""
    files = annotation_files(root, source, MLVU_PATTERNS, "MLVU")
    items: list[Item] = []
    for path in files:
        if any(task in path.stem for task in _MLVU_GENERATION_TASKS):
            continue
        for index, (where, record) in enumerate(read_records(path)):
            if isinstance(record, dict) and "candidates" in record and "video" in record:
                items.append(_mlvu_official(record, where, Path(root), path.stem, index))
            elif isinstance(record, dict) and "video_name" in record:
                items.append(_mlvu_lmms(record, where, Path(root), index))
            else:
                item = flash_item(record, where, Path(root), ("duration",))
                task = record.get("task_type") or record.get("type") or record.get("question_type")
                categories = {**item.categories, **({"task_type": str(task)} if task else {})}
                items.append(replace(item, categories=categories))
    return check_unique_ids(items, files[0])


# --- LVBench

LVBENCH_PATTERNS = (
    "test_qa.json",
    "video_info.meta.jsonl",
    "*.meta.jsonl",
    "*.parquet",
    "data/*.parquet",
    "*.jsonl",
    "*.json",
)


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _lvbench_qa(
    qa: dict, where: str, root: Path, video_candidates: list[str], source: str, **categories
) -> Item:
    require(qa, ["uid", "question", "answer"], where)
    stem, options = split_options(str(qa["question"]))
    if qa.get("options"):
        options = tuple(strip_letter(str(option)) for option in qa["options"])
    if len(options) < 2:
        raise AnnotationError(f"{where}: could not find the '(A) ...' option lines in the question.")
    video, is_dir = find_media(root, video_candidates, where)
    categories = {k: v for k, v in categories.items() if v}
    categories["question_type"] = _as_list(qa.get("question_type"))
    return Item(
        id=str(qa["uid"]),
        video=video,
        question=stem,
        options=options,
        answer=letter_to_index(qa["answer"], len(options), where),
        categories=categories,
        frames_dir=is_dir,
        question_text=str(qa["question"]),
        source=source,
        extra={"time_reference": qa.get("time_reference")},
    )


def load_lvbench(root: Path, source: str | None = None) -> list[Item]:
    """Load LVBench; a question with several ``question_type``s keeps all of them (it counts toward each)."""
    files = annotation_files(root, source, LVBENCH_PATTERNS, "LVBench")
    root = Path(root)
    items: list[Item] = []
    for path in files:
        for where, record in read_records(path):
            if isinstance(record, dict) and "qa" in record:  # official: one line per video
                require(record, ["key", "qa"], where)
                key = str(record["key"])
                media = [f"videos/{key}.mp4", f"{key}.mp4", f"frames/{key}"]
                for qa_index, qa in enumerate(record["qa"]):
                    items.append(
                        _lvbench_qa(
                            qa,
                            f"{where} qa {qa_index}",
                            root,
                            media,
                            "official",
                            video_type=record.get("type"),
                        )
                    )
            elif isinstance(record, dict) and "video_path" in record:  # lmms-eval
                name = str(record["video_path"])
                items.append(
                    _lvbench_qa(
                        record, where, root, [name, f"videos/{name}"], "lmms", video_type=record.get("type")
                    )
                )
            else:
                item = flash_item(record, where, root, ("type",))
                categories = {"question_type": _as_list(record.get("question_type"))}
                if record.get("type"):
                    categories["video_type"] = str(record["type"])
                items.append(replace(item, categories=categories))
    return check_unique_ids(items, files[0])
