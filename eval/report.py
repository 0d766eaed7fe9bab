"""Writing results, and the lines the ``eval`` command prints about them.

``results.json`` and ``results.md`` (a markdown table per category breakdown) go into the run folder; the command
prints a one-line summary with the skipped and missing counts next to the accuracy, and one warning per broken
video (however many questions share it) and per malformed annotation record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "results_markdown", "summary_line", "warning_lines", "write_results"]

MAX_MALFORMED_LINES = 20
"""Malformed records listed one per line before the rest are only counted (all are in ``results.json``)."""


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
    if results.get("malformed"):
        lines += ["", "Malformed annotation records (skipped):", ""]
        lines += [f"- {m['where']}" + (f" (id {m['id']})" if m.get("id") else "") + f": {m['reason']}"
                  for m in results["malformed"]]
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


def _skip_kind(reason: str) -> str:
    """``"missing video: a.mp4"`` -> ``"missing video"`` (the text before the first colon)."""
    return reason.split(":", 1)[0].strip()


def _metric(name: str, value: Any) -> str:
    if value is None:
        return f"{name} -"
    return f"{name} {value:.2f}" if name == "score" else f"{name} {value:.1f}"


def summary_line(results: dict[str, Any]) -> str:
    """One line: the headline metrics, then how many questions were scored and what was left out.

    >>> summary_line({"benchmark": "mvbench", "profile": "flash-vstream", "metrics": {"accuracy": 41.2},
    ...               "counts": {"scored": 1980, "skipped": 12, "missing": 8},
    ...               "skipped": [{"id": str(i), "reason": "missing video: v.mp4"} for i in range(12)]})
    'mvbench [flash-vstream]: accuracy 41.2 (n=1980, skipped 12: missing video, missing 8)'
    """
    metrics = ", ".join(_metric(name, value) for name, value in (results.get("metrics") or {}).items())
    counts = results.get("counts", {})
    parts = [f"n={counts.get('scored', counts.get('predicted', 0))}"]
    if counts.get("skipped"):
        kinds: dict[str, int] = {}
        for row in results.get("skipped", []):
            kinds[_skip_kind(row["reason"])] = kinds.get(_skip_kind(row["reason"]), 0) + 1
        detail = ", ".join(kind if len(kinds) == 1 else f"{kind} {n}" for kind, n in kinds.items())
        parts.append(f"skipped {counts['skipped']}" + (f": {detail}" if detail else ""))
    for key, label in (("missing", "missing"), ("excluded", "excluded"), ("unlabelled", "unlabelled"),
                       ("malformed", "malformed records")):
        if counts.get(key):
            parts.append(f"{label} {counts[key]}")
    headline = metrics or results.get("note", "")
    return f"{results['benchmark']} [{results['profile']}]: {headline} ({', '.join(parts)})"


def warning_lines(results: dict[str, Any]) -> list[str]:
    """``warning: ...`` lines: one per skipped video (with how many questions it affects), one per malformed record.

    Questions are grouped by video (``video`` field of the skipped rows, else the reason text), so a broken video
    shared by ten questions is one line. Beyond `MAX_MALFORMED_LINES` malformed records only a count is printed.
    """
    groups: dict[str, list[str]] = {}
    for row in results.get("skipped", []):
        groups.setdefault(row.get("video") or row["reason"], []).append(row["reason"])
    lines = []
    for reasons in groups.values():
        n = len(reasons)
        lines.append(f"warning: {reasons[0]}; {n} question{'s' if n != 1 else ''} skipped")
    malformed = results.get("malformed", [])
    for row in malformed[:MAX_MALFORMED_LINES]:
        name = f" (id {row['id']})" if row.get("id") else ""
        lines.append(f"warning: skipped malformed record {row['where']}{name}: {row['reason']}")
    if len(malformed) > MAX_MALFORMED_LINES:
        lines.append(f"warning: ... and {len(malformed) - MAX_MALFORMED_LINES} more malformed records "
                     "(all listed in results.json)")
    return lines
