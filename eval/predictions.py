"""Append-only, crash-safe predictions files (one JSON object per line).

Each finished item is written as one line, flushed and fsynced before the next item starts, so a ``kill -9``
loses at most the item in flight. On reopening, a torn last line (a write cut short) is cut off the file, which
then holds only whole records; finished ids are skipped on a rerun, so no item is ever written twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["PredictionWriter", "recover_predictions"]


def recover_predictions(path: Path, *, truncate: bool = True) -> list[dict]:
    """Read the whole records of ``path`` and (by default) truncate any torn tail in place.

    A line counts as whole when it ends with a newline and parses as a JSON object with an ``id``. Reading
    stops at the first line that is not whole: everything from there on is removed (only the last line can be
    torn in a file written by `PredictionWriter`).

    Args:
        path: The JSONL file.
        truncate: Cut the torn tail off the file. Only the process that appends to ``path`` may do this;
            readers of another rank's shard pass ``False``, since its tail may be a line being written.

    Returns:
        The records, in file order (empty when the file does not exist).
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[dict] = []
    good_end = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not isinstance(record, dict) or "id" not in record:
            break
        records.append(record)
        good_end += len(line)
    if truncate and good_end != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
    return records


class PredictionWriter:
    """Appends records to a JSONL file, one durable line per call.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
    >>> with PredictionWriter(path) as writer:
    ...     writer.write({"id": "1", "prediction": "A"})
    >>> recover_predictions(path)
    [{'id': '1', 'prediction': 'A'}]
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and force it to disk."""
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
