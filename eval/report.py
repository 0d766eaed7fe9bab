"""Writing results: ``results.json`` and a markdown table with the per-category breakdowns."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "results_markdown", "write_results"]


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def results_markdown(results: dict[str, Any]) -> str:
    """Render a results dict as markdown: headline metrics, counts, then one table per breakdown key."""
    lines = [f"# {results['benchmark']} ({results['profile']} profile)", ""]
    metrics = results.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in metrics.items()]
        if results.get("fallback_rate") is not None:
            lines.append(f"| fallback rate (%) | {_fmt(results['fallback_rate'])} |")
        lines.append("")
    if results.get("note"):
        lines += [results["note"], ""]
    counts = results.get("counts", {})
    lines.append("Counts: " + ", ".join(f"{key} {value}" for key, value in counts.items()))
    for key, groups in results.get("breakdowns", {}).items():
        with_score = any("score" in group for group in groups.values())
        header = "| " + key + " | n | accuracy |" + (" score |" if with_score else "")
        lines += ["", f"## by {key}", "", header, "|---|---|---|" + ("---|" if with_score else "")]
        for value, group in groups.items():
            row = f"| {value} | {group['n']} | {_fmt(group['accuracy'])} |"
            lines.append(row + (f" {_fmt(group.get('score'))} |" if with_score else ""))
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    """Write ``results.json`` and ``results.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    atomic_write(out_dir / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    atomic_write(out_dir / "results.md", results_markdown(results))
