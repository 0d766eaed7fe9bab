"""Scoring and reporting of the synthetic memory benchmark: accuracy per (memory, distance), a table and a plot.

Scoring makes every question of the run again from its settings (``run_config.json``) and checks each prediction
against the regenerated answer (``flash_vstream.data.accuracy.is_correct``: lower-cased, punctuation and a leading
"the" dropped, equal to the answer; the multiple-choice form: the last word is the right letter). A prediction
whose question text differs from the regenerated one was made with other settings: an error naming it. Questions
without a prediction count as missing, never as wrong.

``results.json``::

    {"benchmark": "synth-memory", "settings": {...}, "chance": 21.2,
     "visual_tokens": {"star": 202, "uniform": 202, "spatial": 192, "fifo": 202},
     "accuracy": {"star": {"10": {"right": 40, "n": 100, "accuracy": 40.0, "needle_held": 100.0}, ...}, ...},
     "counts": {"scored": 1600, "missing": 0}}

``chance`` is the accuracy of a guesser that knows the answer vocabulary (1/6 for a colour, 1/4 for a shape, 1/4
for a letter), averaged over the run's questions. ``needle_held`` is the share of questions (%) whose read-out held a
needle frame whole (``flash_vstream_eval.synth_memory.frames_held_whole``): what the decoder could read the answer
from at full detail, whatever it then said. ``results.md`` is the markdown table; the plot (matplotlib, an
optional extra) draws accuracy against distance on a log axis, one line per memory, chance dashed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flash_vstream.data.accuracy import is_correct
from flash_vstream.data.scenes import COLOURS, SHAPES
from flash_vstream_eval.report import atomic_write

__all__ = ["needle_table", "require_matplotlib", "results_table", "score_synth_memory", "summary_lines", "write_plot",
           "write_synth_results"]


def _chance(question) -> float:
    if question.form == "choice":
        return 1.0 / len(question.options)
    return 1.0 / (len(COLOURS) if question.answer in COLOURS else len(SHAPES))


def score_synth_memory(records: list[dict], settings) -> dict[str, Any]:
    """Accuracy (%) per memory and distance of ``records`` against the questions ``settings`` make.

    Args:
        records: predictions records (``memory``, ``distance``, ``index``, ``question``, ``prediction``).
        settings: the run's :class:`~flash_vstream_eval.synth_memory.SynthMemorySettings`.

    Raises:
        ValueError: for a record of a memory, distance or question the settings do not make, or whose question
            text differs from the regenerated one.
    """
    from flash_vstream_eval.synth_memory import make_questions

    questions = {(q.distance, q.index): q for q in make_questions(settings)}
    by_id: dict[str, dict] = {}
    for record in records:
        key = (record.get("distance"), record.get("index"))
        if record.get("memory") not in settings.memories or key not in questions:
            raise ValueError(f"prediction {record.get('id')!r} is not a question of this run (memories "
                             f"{list(settings.memories)}, distances {list(settings.distances)}, n={settings.n})")
        if record.get("question") != questions[key].question.text:
            raise ValueError(f"prediction {record['id']!r} asks another question than seed {settings.seed} makes; "
                             "it was made with other settings: score it with its own run folder")
        by_id[record["id"]] = record
    accuracy: dict[str, dict[str, dict]] = {}
    tokens: dict[str, list[int]] = {}
    missing = 0
    for memory in settings.memories:
        accuracy[memory] = {}
        for distance in settings.distances:
            right = n = held = 0
            for index in range(settings.n):
                item = questions[(distance, index)]
                record = by_id.get(item.record_id(memory))
                if record is None:
                    missing += 1
                    continue
                n += 1
                right += int(is_correct(record["prediction"], item.question))
                held += int(bool(record.get("needle_held")))
                tokens.setdefault(memory, []).append(int(record.get("visual_tokens", -1)))
            accuracy[memory][str(distance)] = {"right": right, "n": n,
                                               "accuracy": round(100.0 * right / n, 1) if n else None,
                                               "needle_held": round(100.0 * held / n, 1) if n else None}
    chance = sum(_chance(q.question) for q in questions.values()) / len(questions)
    return {
        "benchmark": "synth-memory",
        "settings": settings.to_dict(),
        "chance": round(100.0 * chance, 1),
        "visual_tokens": {m: sorted(set(t)) if len(set(t)) > 1 else t[0] for m, t in tokens.items()},
        "accuracy": accuracy,
        "counts": {"scored": len(by_id), "missing": missing},
    }


def results_table(results: dict[str, Any]) -> str:
    """The markdown table: one row per memory, accuracy % (right/asked) per distance, and its visual tokens."""
    distances = results["settings"]["distances"]
    lines = ["| memory | visual tokens | " + " | ".join(f"{d:,} frames" for d in distances) + " |",
             "|---|---:|" + "---:|" * len(distances)]
    for memory, cells in results["accuracy"].items():
        row = [f"{_pct(c['accuracy'])} ({c['right']}/{c['n']})" for c in (cells[str(d)] for d in distances)]
        tokens = results["visual_tokens"].get(memory, "-")
        lines.append(f"| {memory} | {tokens} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def needle_table(results: dict[str, Any]) -> str:
    """The markdown table of how often each memory held a needle frame whole when asked (% of questions)."""
    distances = results["settings"]["distances"]
    lines = ["| memory | " + " | ".join(f"{d:,} frames" for d in distances) + " |",
             "|---|" + "---:|" * len(distances)]
    for memory, cells in results["accuracy"].items():
        lines.append(f"| {memory} | " + " | ".join(_pct(cells[str(d)].get("needle_held")) for d in distances) + " |")
    return "\n".join(lines) + "\n"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    head = (f"# synth-memory: accuracy by needle distance\n\n{s['n']} questions per distance (seed {s['seed']}, "
            f"held-out split), greedy answers; chance (a guesser knowing the answer words) "
            f"{results['chance']:.1f}%.\n\n")
    counts = results["counts"]
    held = ("\n## Needle frames held whole at question time (% of questions)\n\nA baseline's kept frames, STAR's "
            "spatial and retrieved frames (its temporal clusters, averages, are not counted).\n\n")
    return (head + results_table(results) + f"\nCounts: scored {counts['scored']}, missing {counts['missing']}\n"
            + held + needle_table(results))


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One line per memory: its accuracy at each distance, then the counts and chance."""
    lines = []
    for memory, cells in results["accuracy"].items():
        parts = ", ".join(f"d={d} {_pct(c['accuracy'])} (n={c['n']})" for d, c in cells.items())
        lines.append(f"synth-memory [{memory}, {results['visual_tokens'].get(memory, '-')} tokens]: {parts}")
    counts = results["counts"]
    lines.append(f"synth-memory: scored {counts['scored']}, missing {counts['missing']}, "
                 f"chance {results['chance']:.1f}%")
    return lines


def require_matplotlib():
    """The ``Figure`` and Agg canvas classes of matplotlib.

    Raises:
        ValueError: when matplotlib is not installed, naming the extra that installs it (one ``error:`` line).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError('the synth-memory plot (--plot) needs matplotlib: pip install "flash-vstream[plot]"') from None
    return Figure, FigureCanvasAgg


def write_plot(path: Path, results: dict[str, Any]) -> None:
    """Accuracy against needle distance (log x), one line per memory, chance dashed, to ``path`` (PNG).

    Drawn with matplotlib's object API on the Agg canvas (no pyplot: no global figure state, no display).
    """
    figure_class, canvas_class = require_matplotlib()
    figure = figure_class(figsize=(6.4, 4.0), dpi=120)
    canvas_class(figure)
    axes = figure.add_subplot()
    distances = results["settings"]["distances"]
    for memory, cells in results["accuracy"].items():
        points = [(d, cells[str(d)]["accuracy"]) for d in distances if cells[str(d)]["accuracy"] is not None]
        tokens = results["visual_tokens"].get(memory, "-")
        axes.plot([d for d, _ in points], [a for _, a in points], marker="o", label=f"{memory} ({tokens} tokens)")
    axes.axhline(results["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
    axes.set_xscale("log")
    axes.set_xlabel("needle distance from the end of the stream (frames)")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"synth-memory: {results['settings']['n']} questions per distance, equal token budget")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def write_synth_results(out_dir: Path | None, results: dict[str, Any], *, plot: Path | None = None) -> None:
    """``results.json`` and ``results.md`` into ``out_dir`` (when given), and the plot to ``plot`` (when given)."""
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
        atomic_write(out_dir / "results.md", _markdown(results))
    if plot is not None:
        write_plot(plot, results)
