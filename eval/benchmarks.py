"""The benchmark registry: one declarative `Benchmark` spec per evaluable set, all run by the same runner.

A spec names the benchmark family (which selects the profile's prompt/extraction/aggregation `Rules`), the
loader, and the switches that vary within a family: Video-MME with subtitles, open-ended judging, and the
real-time setting (RVS questions asked on the live stream, see `realtime`), and live commentary judged pairwise
against a reference model (Inf-Streams-Eval, see `inf_streams`).
`Benchmark.load_items` is what the runner and the scorer call: the valid questions plus the malformed records
that were skipped (or, with ``strict``, an error naming the first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from flash_vstream_eval.inf_streams import load_inf_streams_items
from flash_vstream_eval.items import Item, MalformedRecord, RecordLog
from flash_vstream_eval.loaders_long import load_egoschema, load_lvbench, load_mlvu
from flash_vstream_eval.loaders_mvbench import load_mvbench
from flash_vstream_eval.loaders_videomme import load_videomme
from flash_vstream_eval.loaders_vstream import load_vstream

__all__ = ["BENCHMARKS", "Benchmark", "LoadedItems", "get_benchmark"]

Loader = Callable[[Path, "str | None", "RecordLog | None"], list[Item]]


@dataclass(frozen=True)
class LoadedItems:
    """A benchmark's questions as loaded: the valid ones, and the records skipped as malformed."""

    items: list[Item]
    malformed: list[MalformedRecord]


@dataclass(frozen=True)
class Benchmark:
    """One evaluable set."""

    name: str
    """Registry key, used by ``--benchmark``."""
    family: str
    """Which profile rules apply: egoschema, mlvu, lvbench, mvbench, videomme or vstream."""
    load: Loader
    """``load(data_root, annotations_or_None, record_log_or_None) -> items``; no log: the first bad record raises."""
    description: str
    with_subtitles: bool = False
    """Video-MME "w/ subs": subtitle lines at the sampled frames go into the prompt."""
    open_ended: bool = False
    """Answers are free text, scored by a judge (VStream-QA)."""
    submission: bool = False
    """Write a submission file for items whose labels are hidden (EgoSchema full set)."""
    realtime: bool = False
    """Questions are asked on the live stream at their annotated time (RVS), see `realtime`; offline on request."""
    commentary: bool = False
    """Free-running commentary, run by `inf_streams_run` and scored pairwise by `inf_streams_judge`."""
    synthetic: bool = False
    """Questions made at run time by the synthetic generator (no data root), run and scored by `synth_memory`."""

    def load_items(self, root: str | Path, source: str | None = None, *, strict: bool = False) -> LoadedItems:
        """Load the questions, skipping malformed records (each kept with its file, line and reason).

        Args:
            root: The data root.
            source: Annotation file, folder or dataset id instead of auto-detection.
            strict: Raise `items.AnnotationError` at the first malformed record instead.
        """
        log = RecordLog(strict=strict)
        items = self.load(Path(root), source, log)
        return LoadedItems(items, list(log.malformed))


def _made_at_run_time(root: Path, source: str | None = None, log: RecordLog | None = None) -> list[Item]:
    raise ValueError("synth-memory has no annotation files: its questions are made at run time "
                     "(flash-vstream eval run --benchmark synth-memory)")


def _vstream(name: str) -> Loader:
    return lambda root, source=None, log=None: load_vstream(root, name, source, log)


BENCHMARKS: dict[str, Benchmark] = {
    spec.name: spec
    for spec in (
        Benchmark(
            "egoschema",
            "egoschema",
            load_egoschema,
            "EgoSchema full set: labelled 500 scored, all written to a submission file",
            submission=True,
        ),
        Benchmark(
            "egoschema_subset",
            "egoschema",
            partial(load_egoschema, subset_only=True),
            "EgoSchema 500-question labelled subset",
        ),
        Benchmark("mlvu", "mlvu", load_mlvu, "MLVU dev, multiple choice (7 task types)"),
        Benchmark("lvbench", "lvbench", load_lvbench, "LVBench (1,549 questions on 103 long videos)"),
        Benchmark("mvbench", "mvbench", load_mvbench, "MVBench, 20 tasks x 200 questions"),
        Benchmark("videomme", "videomme", load_videomme, "Video-MME without subtitles"),
        Benchmark("videomme_sub", "videomme", load_videomme, "Video-MME with subtitles", with_subtitles=True),
        Benchmark("vs_ego", "vstream", _vstream("vs_ego"), "VStream-QA VS-Ego (offline)", open_ended=True),
        Benchmark(
            "vs_movie", "vstream", _vstream("vs_movie"), "VStream-QA VS-Movie (offline)", open_ended=True
        ),
        Benchmark(
            "rvs_ego",
            "vstream",
            _vstream("rvs_ego"),
            "VStream-QA RVS-Ego (real-time)",
            open_ended=True,
            realtime=True,
        ),
        Benchmark(
            "rvs_movie",
            "vstream",
            _vstream("rvs_movie"),
            "VStream-QA RVS-Movie (real-time)",
            open_ended=True,
            realtime=True,
        ),
        Benchmark(
            "inf_streams",
            "inf_streams",
            load_inf_streams_items,
            "Inf-Streams-Eval live sports commentary (win rate against a reference model)",
            commentary=True,
        ),
        Benchmark(
            "synth-memory",
            "synth-memory",
            _made_at_run_time,
            "synthetic needle streams: accuracy by how far back the needle lies, STAR memory vs baselines",
            synthetic=True,
        ),
    )
}


def get_benchmark(name: str | Benchmark) -> Benchmark:
    """Look a benchmark up by name (or pass one through).

    Raises:
        ValueError: For an unknown name; the message lists the known ones.
    """
    if isinstance(name, Benchmark):
        return name
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)} (--benchmark).")
    return BENCHMARKS[name]
