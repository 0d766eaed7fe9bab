"""Video-MME loader: lmms-eval parquet, the official grouped results-template JSON, Flash-VStream's file.

Every question keeps ``duration`` (short/medium/long), ``domain``, ``sub_category`` and ``task_type`` for the
breakdowns, and the path of its SRT subtitle file (``subtitle/<videoID>.srt``) when that exists. Videos live
at ``data/<videoID>.mp4`` (also ``.MP4``/``.mkv``). Layouts: lmms-eval rows (``videoID``, ``question_id``,
``question``, ``options`` as ``"A. text"``, ``answer`` letter, ``duration``, ``domain``, ``sub_category``,
``task_type``); the official grouped JSON (one entry per video: ``video_id``, ``videoID``, ``duration_category``,
``video_category``, ``video_subcategory``, ``questions``: ``question_id``, ``task_type``, ``question``,
``options`` or ``choices``, ``answer``); Flash-VStream's ``test_qa.json``. A malformed record (or one question of
a grouped entry) goes to the `RecordLog`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from flash_vstream_eval.formats import (
    annotation_files,
    flash_item,
    letter_to_index,
    load_question_records,
    strip_letter,
)
from flash_vstream_eval.items import (
    AnnotationError,
    Item,
    RecordLog,
    find_media,
    require,
    safe_join,
    strict_log,
)

__all__ = ["load_videomme"]

VIDEOMME_PATTERNS = (
    "test_qa.json",
    "videomme/*.parquet",
    "*.parquet",
    "videomme/*.json*",
    "*.jsonl",
    "*.json",
)
CATEGORY_KEYS = ("duration", "domain", "sub_category", "task_type")


def _media(root: Path, video_name: str, where: str) -> tuple[str, bool]:
    names = [f"data/{video_name}.{ext}" for ext in ("mp4", "MP4", "mkv")]
    others = [f"videos/{video_name}.mp4", f"frames/{video_name}", f"{video_name}.mp4"]
    return find_media(root, [*names, *others], where)


def _subtitles(root: Path, video_name: str, where: str) -> str | None:
    for candidate in (f"subtitle/{video_name}.srt", f"subtitles/{video_name}.srt"):
        if safe_join(root, candidate, where).is_file():
            return candidate
    return None


def _question(question: dict, where: str, root: Path, video_name: str, categories: dict, source: str) -> Item:
    require(question, ["question_id", "question", "answer"], where)
    raw_options = question.get("options", question.get("choices"))
    if not raw_options:
        raise AnnotationError(f"{where}: no 'options' (or 'choices') list.")
    options = tuple(strip_letter(str(option)) for option in raw_options)
    video, is_dir = _media(root, video_name, where)
    categories = {k: str(v) for k, v in categories.items() if v is not None}
    if question.get("task_type"):
        categories["task_type"] = str(question["task_type"])
    return Item(
        id=str(question["question_id"]),
        video=video,
        question=str(question["question"]),
        options=options,
        answer=letter_to_index(question["answer"], len(options), where),
        categories=categories,
        frames_dir=is_dir,
        subtitles=_subtitles(root, video_name, where),
        source=source,
        extra={
            "question_id": str(question["question_id"]),
            "video_id": str(question.get("video_id", video_name)),
        },
    )


def _grouped_video(record: dict, where: str, root: Path, log: RecordLog) -> list[Item]:
    """Official ``output_test_template.json`` layout: one entry per video with a ``questions`` list."""
    require(record, ["video_id", "questions"], where)
    if not isinstance(record["questions"], list):
        raise AnnotationError(f"{where}: 'questions' must be a list, got {type(record['questions']).__name__}.")
    video_name = str(record.get("videoID") or record["video_id"])
    categories = {
        "duration": record.get("duration_category", record.get("duration")),
        "domain": record.get("video_category", record.get("domain")),
        "sub_category": record.get("video_subcategory", record.get("sub_category")),
    }
    items = []
    for i, question in enumerate(record["questions"]):
        question_where = f"{where} question {i}"
        with log.guard(question_where, question):
            if not isinstance(question, dict):
                raise AnnotationError(f"{question_where}: expected a JSON object, got {type(question).__name__}.")
            fields = {**question, "video_id": record["video_id"]}
            items.append(_question(fields, question_where, root, video_name, categories, "official"))
    return items


def _record(record: dict, where: str, root: Path) -> Item:
    if isinstance(record, dict) and "videoID" in record:
        categories = {key: record.get(key) for key in ("duration", "domain", "sub_category")}
        return _question(record, where, root, str(record["videoID"]), categories, "lmms")
    item = flash_item(record, where, root, CATEGORY_KEYS)
    video_id = str(record["video_id"])
    video, is_dir = _media(root, video_id, where)
    if item.frames_dir:
        video, is_dir = item.video, True
    return replace(item, video=video, frames_dir=is_dir, subtitles=_subtitles(root, video_id, where))


def load_videomme(root: Path, source: str | None = None, log: RecordLog | None = None) -> list[Item]:
    """Load Video-MME (2,700 questions in the full set) from any of the three layouts.

    Malformed records go to ``log`` (without one, the first raises).
    """
    log = strict_log(log)
    files = annotation_files(root, source, VIDEOMME_PATTERNS, "Video-MME")
    return load_question_records(files, Path(root), log, "questions", _grouped_video, _record)
