"""The synthetic memory benchmark, end to end: run it, then write its plot and table into the docs.

One command regenerates everything ``docs/synth_memory.md`` shows (CPU; the demo model unless ``--model``):

    OMP_NUM_THREADS=1 python scripts/bench_synth_memory.py                 # n=100 per distance, one process
    OMP_NUM_THREADS=1 python scripts/bench_synth_memory.py --workers 2     # the same predictions, two processes
    python scripts/bench_synth_memory.py --n 2 --distances 10,100 --no-docs --out runs/synth_memory_smoke

It runs ``flash-vstream eval run --benchmark synth-memory`` (the same function, the same run folder: a rerun
resumes, other settings are refused unless ``--overwrite``) into ``--out``, then writes the plot to
``docs/images/synth_memory.png`` and replaces the table between the ``synth-memory-table`` markers of
``docs/synth_memory.md`` with this run's (settings, model, date, time taken).
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import sys
import time
from pathlib import Path

from flash_vstream_eval.model_api import ModelSpec
from flash_vstream_eval.synth_memory import DISTANCES, MEMORIES, SynthMemorySettings, run_synth_memory
from flash_vstream_eval.synth_memory_report import needle_table, results_table

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "synth_memory.md"
PLOT = ROOT / "docs" / "images" / "synth_memory.png"
START, END = "<!-- synth-memory-table:start -->", "<!-- synth-memory-table:end -->"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="STAR-family checkpoint (default: the built-in demo model)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "synth_memory", help="run folder")
    parser.add_argument("--n", type=int, default=100, help="questions per distance (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out question set (default 0)")
    parser.add_argument("--distances", default=",".join(map(str, DISTANCES)), help="needle distances (frames)")
    parser.add_argument("--memories", default=",".join(MEMORIES), help="memories compared")
    parser.add_argument("--workers", type=int, default=1, help="processes, one thread each (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="start the run folder over")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/ alone (plot and table in --out only)")
    return parser.parse_args()


def doc_block(results: dict, command: str, model: str, seconds: float) -> str:
    """The markdown that goes between the markers: the table, then how it was made."""
    s = results["settings"]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{START}\n{results_table(results)}\n"
        f"{s['n']} questions per distance (seed {s['seed']}, {int(s['choice_rate'] * 100)}% multiple choice), "
        f"chance {results['chance']:.1f}%; model `{model}` (config sha256 "
        f"`{results.get('model_config_sha256', '?')[:12]}`); {when}; this invocation took {seconds / 60:.1f} min. "
        f"Made by `{command.strip()}`.\n\nHow often a needle frame was held whole (a baseline's kept frames, STAR's "
        f"spatial and retrieved frames) when the question came, % of questions:\n\n{needle_table(results)}{END}"
    )


def update_doc(block: str) -> None:
    text = DOC.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no {START} ... {END} block to replace")
    DOC.write_text(pattern.sub(lambda _: block, text))


def main() -> None:
    args = parse_args()
    from flash_vstream.data.demo import demo_model_dir

    model = args.model or str(demo_model_dir())
    settings = SynthMemorySettings(
        n=args.n, seed=args.seed, distances=tuple(int(d) for d in args.distances.split(",")),
        memories=tuple(m.strip() for m in args.memories.split(",")),
    )
    # --- run (resumes a run folder of the same settings) ---------------------------------------------------
    start = time.time()
    plot = args.out / "synth_memory.png"
    results = run_synth_memory(ModelSpec(model), args.out, settings, overwrite=args.overwrite, plot=plot,
                               workers=args.workers)
    seconds = time.time() - start
    print(results_table(results))
    if args.no_docs:
        return
    # --- docs -------------------------------------------------------------------------------------------------
    import json
    import shutil

    identity = json.loads((args.out / "run_config.json").read_text())["model"]
    results["model_config_sha256"] = identity["config_sha256"]
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plot, PLOT)
    shown = "the demo model" if args.model is None else args.model
    command = "OMP_NUM_THREADS=1 python scripts/bench_synth_memory.py " + " ".join(map(shlex.quote, sys.argv[1:]))
    update_doc(doc_block(results, command, shown, seconds))
    print(f"wrote {PLOT.relative_to(ROOT)} and the table in {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
