"""The run folder's guard: ``run_config.json`` records what produced the predictions, so a rerun resumes only them.

A run folder holds one model's predictions under one set of settings. ``run_config.json`` records them at the
start: the benchmark, profile, data, limit and generation budget, and the model's identity (the checkpoint as
given and as resolved, a SHA-256 of its ``config.json``, its family, options and effective dtype). A rerun with
the same settings resumes; a rerun with anything else is refused with one message naming what differs, because
appending to the old predictions would report a mix of two models (or the old model's accuracy) as the new one's.
``overwrite`` moves the old files into ``overwritten-<UTC time>/`` inside the folder and starts fresh.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flash_vstream_eval.report import atomic_write

__all__ = ["RUN_CONFIG", "RunFolderError", "config_differences", "prepare_run_folder"]

RUN_CONFIG = "run_config.json"
INFORMATIONAL = ("model_given", "device", "world_size")
"""Recorded but not compared: a different spelling of the same checkpoint path, device or process count resumes."""
OUTPUT_PATTERNS = ("predictions*.jsonl", "results.json", "results.md", "submission.json", "submission.csv")


class RunFolderError(ValueError):
    """The run folder holds another run's predictions; the message names the difference and the fix."""


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every compared setting that differs (nested keys dotted, e.g. ``model.dtype``)."""
    old, new = _flatten(previous), _flatten(current)
    keys = [key for key in dict.fromkeys([*new, *old]) if key not in INFORMATIONAL]
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def _old_outputs(out_dir: Path) -> list[Path]:
    found = {path for pattern in OUTPUT_PATTERNS for path in out_dir.glob(pattern)}
    config = out_dir / RUN_CONFIG
    return sorted(found | ({config} if config.exists() else set()))


def _refusal(out_dir: Path, differences: list[str]) -> RunFolderError:
    shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
    return RunFolderError(
        f"{out_dir} holds predictions of a different run ({shown}); pass --overwrite to start over (the old files "
        f"move to {out_dir}/overwritten-<time>/), or a new --out; to resume, repeat the old run's flags."
    )


def _set_aside(out_dir: Path) -> Path | None:
    """Move the old run's files into ``overwritten-<UTC time>/``; return that folder (``None`` if nothing moved)."""
    old = _old_outputs(out_dir)
    if not old:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = out_dir / f"overwritten-{stamp}"
    suffix = 1
    while target.exists():
        target, suffix = out_dir / f"overwritten-{stamp}-{suffix}", suffix + 1
    target.mkdir()
    for path in old:
        path.rename(target / path.name)
    return target


def prepare_run_folder(
    out_dir: Path, config: dict[str, Any], *, rank: int, overwrite: bool, barrier: Callable[[], Any]
) -> None:
    """Check ``out_dir`` against ``config`` on every rank, then (rank 0) set old files aside and record ``config``.

    Every rank reads the old ``run_config.json`` before rank 0 changes anything (``barrier`` between), so all ranks
    refuse together; no rank starts appending before rank 0 has finished (a second ``barrier``).

    Args:
        out_dir: The run folder (created if missing).
        config: This run's settings; see the module docstring.
        rank: This process's rank; only rank 0 writes.
        overwrite: Start over: move the old predictions and results aside instead of refusing.
        barrier: Waits for every rank (a no-op for one process).

    Raises:
        RunFolderError: When the folder holds another run's predictions (or predictions with no
            ``run_config.json``) and ``overwrite`` is false.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUN_CONFIG
    previous = None
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = {"run_config.json": "unreadable"}
    if not overwrite:
        if previous is None and _old_outputs(out_dir):
            raise _refusal(out_dir, [f"predictions but no {RUN_CONFIG} saying which model wrote them"])
        if previous is not None and (differences := config_differences(previous, config)):
            raise _refusal(out_dir, differences)
    barrier()
    if rank == 0:
        if overwrite:
            _set_aside(out_dir)
        if overwrite or previous is None:
            atomic_write(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    barrier()
