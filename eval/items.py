"""The benchmark question record (`Item`), annotation errors, and safe handling of files under a data root.

Every loader turns its benchmark's annotation files into a list of `Item`s; everything after loading (frame
sampling, prompts, scoring) reads only `Item` fields. This module also holds the pieces all loaders share:
reading JSON / JSONL / parquet records with errors that name the file and the line, collecting malformed records
(`RecordLog`: skipped and counted, or raised at once when strict), resolving Hugging Face dataset ids
(`lmms-lab/<x>`, `lmms-eval/<x>`) to a local directory without ever downloading, and keeping every media path
inside the data root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AnnotationError",
    "Item",
    "LETTERS",
    "MalformedRecord",
    "RecordLog",
    "find_media",
    "hf_cache_dir",
    "read_records",
    "require",
    "resolve_dataset_dir",
    "safe_join",
]

LETTERS = "ABCDEFGH"
"""Option letters, in order: option ``i`` is ``LETTERS[i]``."""


class AnnotationError(ValueError):
    """An annotation file or record that cannot be used; the message names the file, record and fix."""


@dataclass(frozen=True)
class Item:
    """One benchmark question, in the same shape for every benchmark and annotation format.

    Multiple-choice answers are stored as a 0-based option index (``answer_letter`` gives the letter);
    open-ended answers as text; ``None`` means the label is hidden (EgoSchema's full set, MLVU test).
    """

    id: str
    """Unique within the benchmark; predictions files are keyed by it."""
    video: str
    """Video file or frame folder, relative to the data root (POSIX separators)."""
    question: str
    """The question stem, without options."""
    options: tuple[str, ...] | None
    """Option texts without their letters, or ``None`` for open-ended questions."""
    answer: int | str | None
    """Option index (multiple choice), reference text (open-ended) or ``None`` when hidden."""
    categories: dict[str, Any] = field(default_factory=dict)
    """Breakdown keys, e.g. ``duration``, ``task_type``, ``question_type`` (a list counts toward each)."""
    start: float | None = None
    """Start of the window the question is about, in seconds (MVBench bounded tasks, RVS)."""
    end: float | None = None
    """End of that window, in seconds."""
    frames_dir: bool = False
    """True when ``video`` is a folder of frame images instead of a video file."""
    frames_fps: float = 1.0
    """Frame rate at which a frame folder was extracted (MVBench episodic_reasoning: 3)."""
    subtitles: str | None = None
    """SRT file relative to the data root (Video-MME), or ``None``."""
    question_text: str | None = None
    """The question with its options exactly as the source file wrote them, when it embeds them."""
    source: str = "official"
    """Annotation layout of the item: "official", "lmms" or "flash" (Flash-VStream ``test_qa.json``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Source fields kept for submission files (e.g. EgoSchema ``q_uid``, Video-MME ``question_id``)."""

    def __post_init__(self) -> None:
        if self.options is None:
            return
        if not 1 <= len(self.options) <= len(LETTERS):
            raise AnnotationError(
                f"{len(self.options)} options; a multiple-choice question has 1 to {len(LETTERS)} "
                f"(letters {LETTERS[0]}-{LETTERS[-1]})."
            )
        valid = isinstance(self.answer, int) and not isinstance(self.answer, bool)
        if self.answer is not None and not (valid and 0 <= self.answer < len(self.options)):
            raise AnnotationError(f"answer {self.answer!r} is not an option index for {len(self.options)} options.")

    @property
    def is_multiple_choice(self) -> bool:
        return self.options is not None

    @property
    def answer_letter(self) -> str | None:
        """The correct option's letter, or ``None`` for open-ended or hidden answers."""
        if self.options is None or self.answer is None:
            return None
        return LETTERS[int(self.answer)]


def require(record: Any, keys: Sequence[str], where: str) -> None:
    """Raise `AnnotationError` unless ``record`` is a dict holding every key in ``keys``.

    Args:
        record: The parsed record.
        keys: Field names it must have.
        where: "<file> record <i>" (or "line <n>") used in the message.
    """
    if not isinstance(record, dict):
        raise AnnotationError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    missing = [k for k in keys if k not in record or record[k] is None]
    if missing:
        raise AnnotationError(
            f"{where}: missing field(s) {missing}; present: {sorted(record)}. "
            "Check that the file matches the benchmark's layout (docs/eval.md)."
        )


_ID_KEYS = ("id", "uid", "question_id", "q_uid", "video_idx")


@dataclass(frozen=True)
class MalformedRecord:
    """An annotation record that could not become an `Item`: where it is, why, and its id when it has one."""

    where: str
    """File and line (or parquet row), e.g. ``"json/plotQA.json line 12 (record 3)"``."""
    reason: str
    """What is wrong with it, without the location."""
    id: str | None = None
    """The id the record would have had (predictions for it are then recognised, not "unknown")."""


class RecordLog:
    """Collects malformed records while loading; with ``strict`` the first one raises instead.

    >>> log = RecordLog()
    >>> with log.guard("a.json line 3", {"id": 7}):
    ...     raise AnnotationError("a.json line 3: missing field(s) ['answer']")
    >>> log.malformed
    [MalformedRecord(where='a.json line 3', reason="missing field(s) ['answer']", id='7')]
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.malformed: list[MalformedRecord] = []

    def add(self, where: str, reason: str, item_id: str | None = None) -> None:
        """Record one malformed record, or raise `AnnotationError` naming it when strict."""
        if self.strict:
            raise AnnotationError(f"{where}: {reason}")
        self.malformed.append(MalformedRecord(where, reason, item_id))

    @contextmanager
    def guard(self, where: str, record: Any = None, item_id: Any = None) -> Iterator[None]:
        """Run the block that turns one record into items; an `AnnotationError` in it marks the record malformed.

        Args:
            where: The record's file and line.
            record: The raw record, to find its id in.
            item_id: Its id when the loader computes ids (e.g. from the record's position).
        """
        try:
            yield
        except AnnotationError as err:
            message = str(err)
            if self.strict:  # the same message either way, always with the location
                if message.startswith(where):
                    raise
                raise AnnotationError(f"{where}: {message}") from None
            reason = message
            for prefix in (f"{where}: ", f"{where} "):
                reason = reason.removeprefix(prefix)
            if item_id is None and isinstance(record, dict):
                item_id = next((record[key] for key in _ID_KEYS if record.get(key) is not None), None)
            self.malformed.append(MalformedRecord(where, reason, None if item_id is None else str(item_id)))


def strict_log(log: RecordLog | None) -> RecordLog:
    """``log`` itself, or a strict one when none is given (direct loader calls raise at the first bad record)."""
    return log if log is not None else RecordLog(strict=True)


def read_records(path: Path, log: RecordLog | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, record)`` from a ``.json`` list, a ``.jsonl`` file or a ``.parquet`` file.

    ``where`` names the file and the line ("file.jsonl line 7", "file.json line 12 (record 3)", "file.parquet
    row 4") for error messages.

    Args:
        path: The annotation file.
        log: Where a JSONL line that is not valid JSON goes (skipped); without one it raises.

    Raises:
        AnnotationError: If the file is missing, a JSON list file is not valid JSON (with the line), or it is
        not a list.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(
            f"annotation file {path} does not exist; pass the right --data root or --annotations."
        )
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix == ".jsonl":
        yield from _read_jsonl(path, strict_log(log))
    else:
        yield from _read_json_list(path)


def read_json(path: Path) -> Any:
    """Parse a JSON file, raising `AnnotationError` with the file, line and column on a syntax error."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise AnnotationError(f"annotation file {path} does not exist; check the data root.") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(
            f"{path} line {err.lineno} column {err.colno}: invalid JSON ({err.msg})."
        ) from None


def _read_json_list(path: Path) -> Iterator[tuple[str, dict]]:
    data = read_json(path)  # the whole file parses (or the error names its line) before any record is used
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of records, got {type(data).__name__}.")
    # Walk the list again with raw_decode to learn the line each record starts on.
    text = Path(path).read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0
    for index in range(len(data)):
        while text[pos] in " \t\r\n,":
            pos += 1
        line, counted = line + text.count("\n", counted, pos), pos
        record, pos = decoder.raw_decode(text, pos)
        yield f"{path} line {line} (record {index})", record


def _read_jsonl(path: Path, log: RecordLog) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                log.add(f"{path} line {line_number}", f"invalid JSON ({err.msg}).")
                continue
            yield f"{path} line {line_number}", record


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise AnnotationError(
            f"{path} is a parquet file, which needs pyarrow: `pip install pyarrow` "
            "(or convert it to JSON lines)."
        ) from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        raise AnnotationError(f"{path}: unreadable parquet file ({err}).") from None
    for index, record in enumerate(rows):
        yield f"{path} row {index}", record


def safe_join(root: Path, relative: str, where: str = "") -> Path:
    """Join ``relative`` onto ``root``, refusing anything that would land outside the root.

    ``where`` ("<file> line <n>") is put in front of the error message so it names the record.

    Raises:
        AnnotationError: For absolute paths and ``..`` escapes.
    """
    # Lexical check only: symlinked media folders under the root (common for large datasets) stay allowed.
    normalized = os.path.normpath(relative.replace("\\", "/"))
    prefix = f"{where}: " if where else ""
    if os.path.isabs(normalized) or relative.startswith(("/", "\\")):
        raise AnnotationError(
            f"{prefix}media path {relative!r} is absolute; annotations must give paths under the data root."
        )
    if normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
        raise AnnotationError(
            f"{prefix}media path {relative!r} leaves the data root {root}; remove the '..' parts."
        )
    return Path(root) / normalized


def find_media(root: Path, candidates: Sequence[str], where: str = "") -> tuple[str, bool]:
    """Pick the first candidate media path (file or frame folder) that exists under ``root``.

    ``where`` names the record in the error raised for a path that leaves the root (see `safe_join`).

    Returns:
        ``(relative path, is_frame_folder)``; when none exists, the first candidate (the runner then records
        the item as skipped with a "missing video" reason).
    """
    for candidate in candidates:
        path = safe_join(root, candidate, where)
        if path.is_dir():
            return candidate, True
        if path.is_file():
            return candidate, False
    safe_join(root, candidates[0], where)
    return candidates[0], False


def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache (huggingface_hub's own resolution of ``HF_HUB_CACHE``/``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_dataset_dir(source: str, root: Path) -> Path:
    """Turn an annotation source into a local directory or file: a path, or an HF dataset id. Never downloads.

    An id such as ``lmms-lab/Video-MME`` or ``lmms-eval/Video-MME`` (the org was renamed in 2026; both are
    accepted) is looked up as ``<root>/<org>/<name>`` and ``<root>/<name>`` for either org, then as a snapshot
    in the local HF hub cache (``datasets--<org>--<name>/snapshots/*``).

    Raises:
        AnnotationError: When nothing local matches; the message lists every place tried.
    """
    path = Path(source)
    if path.is_absolute() or path.exists():
        if not path.exists():
            raise AnnotationError(
                f"annotations {source} do not exist; pass an existing file or folder as --annotations."
            )
        return path
    if (Path(root) / source).exists():
        return Path(root) / source
    if source.count("/") != 1:
        raise AnnotationError(
            f"annotation source {source!r} is neither a local path nor an '<org>/<name>' dataset id."
        )
    org, name = source.split("/")
    orgs = [org] + [o for o in ("lmms-lab", "lmms-eval") if o != org and org in ("lmms-lab", "lmms-eval")]
    tried = []
    for candidate_org in orgs:
        for candidate in (Path(root) / candidate_org / name, Path(root) / name):
            tried.append(candidate)
            if candidate.is_dir():
                return candidate
        snapshots = hf_cache_dir() / f"datasets--{candidate_org}--{name}" / "snapshots"
        tried.append(snapshots)
        if snapshots.is_dir():
            found = sorted(p for p in snapshots.iterdir() if p.is_dir())
            if found:
                return found[-1]
    raise AnnotationError(
        f"dataset {source!r} is not available locally (tried {[str(t) for t in tried]}). "
        "Nothing is downloaded: "
        f"fetch it yourself (e.g. `huggingface-cli download --repo-type dataset {source}`) "
        "or pass a local path."
    )
