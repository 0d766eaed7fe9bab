"""Helpers shared by the benchmark loaders: option parsing, answers, the Flash-VStream record layout.

Flash-VStream-Qwen ships one layout for every multiple-choice benchmark
(``data/eval_video/<bench>/test_qa.json``:
``{"id", "video_id", "question" (options written into the text), "answer": <index>, ...}``) and the open-ended
"MSVD format" (``{"video_id", "question", "id", "answer": <text>, ...}``); `flash_item` reads both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from flash_vstream_eval.items import (
    LETTERS,
    AnnotationError,
    Item,
    RecordLog,
    find_media,
    read_records,
    require,
    strict_log,
)

__all__ = [
    "check_unique_ids",
    "load_question_records",
    "flash_item",
    "flash_media_candidates",
    "letter_to_index",
    "split_options",
    "strip_letter",
]

# "(A) text", "A. text", "A) text", "A: text" at the start of a line.
_OPTION_LINE = re.compile(r"^\s*\(?([A-H])[).:]\s*(.*)$")


def split_options(text: str) -> tuple[str, tuple[str, ...]]:
    """Split a question with embedded option lines into ``(stem, options)``.

    Option lines look like ``(A) x`` or ``A. x``; an "Options:" header and a leading "Question:" are dropped
    from the stem, and so is a trailing "Only give the best option." line.
    """
    stem_lines: list[str] = []
    options: list[str] = []
    for line in text.strip().splitlines():
        match = _OPTION_LINE.match(line)
        if match and match.group(1) == LETTERS[len(options)]:
            options.append(match.group(2).strip())
        elif not options:
            stem_lines.append(line)
    stem = "\n".join(stem_lines).strip()
    stem = re.sub(r"\n?Options?:\s*$", "", stem).strip()
    stem = re.sub(r"^Question:\s*", "", stem, flags=re.MULTILINE).strip()
    return stem, tuple(options)


def strip_letter(option: str) -> str:
    """``"A. text"`` / ``"(A) text"`` -> ``"text"``; other strings unchanged."""
    match = _OPTION_LINE.match(option)
    return match.group(2).strip() if match else option.strip()


def letter_to_index(answer: Any, num_options: int, where: str) -> int:
    """Normalise an answer given as a letter, a digit string or an int to a 0-based option index.

    Raises:
        AnnotationError: If the answer is not a valid option for ``num_options`` options.
    """
    if isinstance(answer, str):
        token = answer.strip().strip("().")
        if len(token) == 1 and token.upper() in LETTERS:
            index = LETTERS.index(token.upper())
        elif token.isdigit():
            index = int(token)
        else:
            raise AnnotationError(f"{where}: answer {answer!r} is neither an option letter nor an index.")
    elif isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    else:
        raise AnnotationError(f"{where}: answer {answer!r} must be a letter or an integer index.")
    if not 0 <= index < num_options:
        raise AnnotationError(f"{where}: answer {answer!r} is out of range for {num_options} options.")
    return index


def load_question_records(
    files: Sequence[Path],
    root: Path,
    log: RecordLog,
    group_key: str,
    grouped: Callable[[dict, str, Path, RecordLog], Iterable[Item]],
    single: Callable[[Any, str, Path], Item],
) -> list[Item]:
    """Items of annotation files whose records are one question each, or one video with its questions.

    A record holding ``group_key`` (the official per-video layouts) goes to ``grouped``, any other to ``single``;
    a malformed record goes to ``log`` (with its file and line) and is skipped. Ids are checked to be unique.
    """
    items: list[Item] = []
    for path in files:
        for where, record in read_records(path, log):
            with log.guard(where, record):
                if isinstance(record, dict) and group_key in record:
                    items.extend(grouped(record, where, root, log))
                else:
                    items.append(single(record, where, root))
    return check_unique_ids(items, files[0], log)


def check_unique_ids(items: Sequence[Item], source: Path | str, log: RecordLog | None = None) -> list[Item]:
    """``items`` without repeated ids (predictions are keyed by id): a repeat is a malformed record.

    Raises:
        AnnotationError: For a repeated id when the log is strict (or absent), and when no valid question is
        left (the message counts the malformed ones).
    """
    log = strict_log(log)
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.id in seen:
            log.add(str(source), f"item id {item.id!r} appears twice; ids must be unique (the repeat is skipped).")
            continue
        seen.add(item.id)
        unique.append(item)
    if not unique:
        bad = log.malformed
        detail = f" ({len(bad)} malformed record(s), first: {bad[0].where}: {bad[0].reason})" if bad else ""
        raise AnnotationError(
            f"{source}: no valid questions found{detail}; check the file and the --benchmark choice."
        )
    return unique


def flash_media_candidates(video_id: str) -> list[str]:
    """Where a Flash-VStream layout keeps a video: its 1-fps frame folder first, then video files."""
    return [f"frames/{video_id}", f"videos/{video_id}.mp4", f"videos/{video_id}", f"{video_id}.mp4", video_id]


def flash_item(
    record: dict,
    where: str,
    root: Path,
    category_keys: Iterable[str] = (),
    media: Sequence[str] | None = None,
) -> Item:
    """Build an `Item` from a Flash-VStream ``test_qa.json`` record (multiple choice or open-ended).

    A record whose ``answer`` is an int is multiple choice: the options are parsed out of the question, which
    is also kept verbatim (``question_text``) for the Flash-VStream prompt. Otherwise the answer is reference
    text (VStream-QA and the other open-ended sets).

    Args:
        record: The parsed record.
        where: File and record index, for errors.
        root: Data root, to pick the media path that exists.
        category_keys: Fields copied into ``categories`` when present.
        media: Candidate media paths; default `flash_media_candidates` of ``video_id``.
    """
    require(record, ["video_id", "question", "answer"], where)
    video_id = str(record["video_id"])
    item_id = str(record.get("id", video_id))
    video, is_dir = find_media(root, media or flash_media_candidates(video_id), where)
    categories = {key: record[key] for key in category_keys if record.get(key) is not None}
    answer = record["answer"]
    if isinstance(answer, int) and not isinstance(answer, bool):
        stem, options = split_options(record["question"])
        if not options:
            raise AnnotationError(f"{where}: could not find the '(A) ...' option lines in the question.")
        index = letter_to_index(answer, len(options), where)
        return Item(
            id=item_id,
            video=video,
            question=stem,
            options=options,
            answer=index,
            categories=categories,
            frames_dir=is_dir,
            question_text=record["question"],
            source="flash",
            extra={"video_id": video_id},
        )
    return Item(
        id=item_id,
        video=video,
        question=str(record["question"]),
        options=None,
        answer=str(answer),
        categories=categories,
        frames_dir=is_dir,
        source="flash",
        extra={"video_id": video_id},
    )


def annotation_files(root: Path, source: str | None, patterns: Sequence[str], benchmark: str) -> list[Path]:
    """Find a benchmark's annotation files: ``source`` (file, folder or dataset id) or found under root.

    In a folder, the first glob pattern that matches anything wins, so the order of ``patterns`` sets which
    layout is preferred when several are present.

    Raises:
        AnnotationError: When nothing matches; the message lists the patterns tried.
    """
    from flash_vstream_eval.items import resolve_dataset_dir

    base = resolve_dataset_dir(source, root) if source else Path(root)
    if base.is_file():
        return [base]
    if not base.is_dir():
        raise AnnotationError(
            f"data root {base} is not a directory; pass --data pointing at the {benchmark} folder."
        )
    for pattern in patterns:
        found = sorted(path for path in base.glob(pattern) if path.is_file())
        if found:
            return found
    raise AnnotationError(
        f"no {benchmark} annotations under {base} (looked for {list(patterns)}); "
        "see docs/eval.md for the layouts."
    )
