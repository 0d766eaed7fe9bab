"""Loaders for the long-video multiple-choice benchmarks: EgoSchema, MLVU (dev) and LVBench.

Each loader accepts the benchmark's official files, the Hugging Face layouts lmms-eval reads (parquet or JSON
records) and Flash-VStream's ``test_qa.json``; the layout is recognised per record from its fields (the files and
fields of each layout are listed in ``docs/eval.md``):

- EgoSchema: official ``questions.json`` (``q_uid``, ``question``, ``option 0``..``option 4``) with the labels
  of the 500-question subset in ``subset_answers.json``; lmms-eval parquet (``video_idx``, ``question``,
  ``option`` as ``"A. text"`` strings, ``answer`` a digit string, empty when hidden).
- MLVU dev: official ``json/<n>_<task>.json`` (``video``, ``question``, ``candidates``, ``answer`` as text);
  ``sy1998/MLVU_dev`` rows (``video_name``, ``question`` with the options written in, ``candidates``,
  ``answer`` a letter, ``task_type``).
- LVBench: official ``video_info.meta.jsonl``, one line per video (``key``, ``type``, ``qa``: ``uid``,
  ``question`` with ``(A) ...`` lines, ``answer`` letter, ``question_type`` list); lmms-eval rows (one per
  question, ``video_path``).

A malformed record is handed to the `RecordLog` (skipped and counted, or raised when strict).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from flash_vstream_eval.formats import (
    annotation_files,
    check_unique_ids,
    flash_item,
    letter_to_index,
    load_question_records,
    split_options,
    strip_letter,
)
from flash_vstream_eval.items import (
    AnnotationError,
    Item,
    RecordLog,
    find_media,
    read_json,
    read_records,
    require,
    strict_log,
)

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


def load_egoschema(
    root: Path, source: str | None = None, log: RecordLog | None = None, *, subset_only: bool = False
) -> list[Item]:
    """Load EgoSchema questions (500 labelled ones when ``subset_only``; otherwise every question found).

    Items without a label (the hidden full set) have ``answer=None``: they are not scored but go into the
    submission file. Malformed records go to ``log`` (without one, the first raises).
    """
    log = strict_log(log)
    files = annotation_files(root, source, EGOSCHEMA_SUBSET if subset_only else EGOSCHEMA_FULL, "EgoSchema")
    items: list[Item] = []
    for path in files:
        answers_path = path.parent / "subset_answers.json"
        answers = read_json(answers_path) if answers_path.is_file() else {}
        for where, record in read_records(path, log):
            with log.guard(where, record):
                items.append(_egoschema_item(record, where, Path(root), answers))
    if subset_only:
        items = [item for item in items if item.answer is not None]
    return check_unique_ids(items, files[0], log)


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


def _mlvu_record(record: dict, where: str, root: Path, task_file: str, index: int) -> Item:
    if isinstance(record, dict) and "candidates" in record and "video" in record:
        return _mlvu_official(record, where, root, task_file, index)
    if isinstance(record, dict) and "video_name" in record:
        return _mlvu_lmms(record, where, root, index)
    item = flash_item(record, where, root, ("duration",))
    task = record.get("task_type") or record.get("type") or record.get("question_type")
    return replace(item, categories={**item.categories, **({"task_type": str(task)} if task else {})})


def _mlvu_id(record: object, task_file: str, index: int) -> str | None:
    """The id a record gets, computed the way the layout computes it (to name a malformed record)."""
    if not isinstance(record, dict):
        return None
    if "candidates" in record and "video" in record:
        return f"{task_file}_{index}"
    if "video_name" in record:
        return str(record.get("question_id", index))
    return None  # Flash-VStream layout: the record's own "id" (the log finds it)


def load_mlvu(root: Path, source: str | None = None, log: RecordLog | None = None) -> list[Item]:
    """Load MLVU-dev multiple-choice questions from any of the three layouts; malformed records go to ``log``."""
    log = strict_log(log)
    files = annotation_files(root, source, MLVU_PATTERNS, "MLVU")
    items: list[Item] = []
    for path in files:
        if any(task in path.stem for task in _MLVU_GENERATION_TASKS):
            continue
        for index, (where, record) in enumerate(read_records(path, log)):
            with log.guard(where, record, _mlvu_id(record, path.stem, index)):
                items.append(_mlvu_record(record, where, Path(root), path.stem, index))
    return check_unique_ids(items, files[0], log)


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
    if not options:
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


def _lvbench_video(record: dict, where: str, root: Path, log: RecordLog) -> list[Item]:
    """Official layout: one line per video, its questions in ``qa`` (each one guarded on its own)."""
    require(record, ["key", "qa"], where)
    if not isinstance(record["qa"], list):
        raise AnnotationError(f"{where}: 'qa' must be a list of questions, got {type(record['qa']).__name__}.")
    key = str(record["key"])
    media = [f"videos/{key}.mp4", f"{key}.mp4", f"frames/{key}"]
    items = []
    for qa_index, qa in enumerate(record["qa"]):
        qa_where = f"{where} qa {qa_index}"
        with log.guard(qa_where, qa):
            items.append(_lvbench_qa(qa, qa_where, root, media, "official", video_type=record.get("type")))
    return items


def _lvbench_record(record: dict, where: str, root: Path) -> Item:
    if isinstance(record, dict) and "video_path" in record:  # lmms-eval
        name = str(record["video_path"])
        return _lvbench_qa(record, where, root, [name, f"videos/{name}"], "lmms", video_type=record.get("type"))
    item = flash_item(record, where, root, ("type",))
    categories = {"question_type": _as_list(record.get("question_type"))}
    if record.get("type"):
        categories["video_type"] = str(record["type"])
    return replace(item, categories=categories)


def load_lvbench(root: Path, source: str | None = None, log: RecordLog | None = None) -> list[Item]:
    """Load LVBench; a question with several ``question_type``s keeps all of them (it counts toward each).

    Malformed records (or single questions of an official per-video line) go to ``log``.
    """
    log = strict_log(log)
    files = annotation_files(root, source, LVBENCH_PATTERNS, "LVBench")
    return load_question_records(files, Path(root), log, "qa", _lvbench_video, _lvbench_record)
