"""Planning and running a feature extraction: which media to extract, where each file goes, shards, resume, summary.

The plan reads the data exactly as training does (:func:`~flash_vstream.train.mixture.load_mixture`: the rows a
mixture selects, media resolved under their roots; unusable rows are counted by reason, not extracted) and gives
every distinct medium one job, in data order. Its target mirrors the data root: for a medium under the root ``R``
(a source's ``video_root``, ``image_root`` or ``media_root``, relative to the data root), named ``P`` in its row,
the target is ``OUT/R/P`` with ``P``'s suffix replaced by ``.safetensors``. So a row ``x/clip.mp4`` of a data file
read with ``--media-root DATA`` finds ``OUT/x/clip.safetensors`` when read with ``--media-root OUT``; a mixture is
rewritten into ``OUT`` with absolute data-file paths (:func:`write_features_mixture`), whose media resolve under
``OUT``.

Media that are already features are linked (or copied) to their target, so the output holds every medium the
data names. Two media that would write the same file
(``x/a.mp4`` and ``x/a.mkv``) both fail: training could not tell them apart.

Rank ``r`` of ``w`` takes jobs ``r, r + w, ...`` (:func:`shard`); every rank builds the same plan, so no
communication is needed to split the work, and resuming with another number of processes is fine.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flash_vstream.train.data import MEDIA_KEYS, Media, read_rows
from flash_vstream.train.feature_store import (
    copy_features,
    feature_status,
    orphan_partials,
    partial_path,
    remove_partials,
    target_name,
    write_features,
)
from flash_vstream.train.mixture import MIXTURE_SUFFIXES, LoadedMixture, load_mixture

__all__ = [
    "ExtractionPlan",
    "ExtractionSummary",
    "FeatureJob",
    "features_hint",
    "plan_extraction",
    "remove_orphan_partials",
    "render_summary",
    "run_extraction",
    "shard",
    "summary_record",
    "write_features_mixture",
]

MAX_LISTED_ISSUES = 20
"""Data issues kept in a plan, and failures listed in the terminal summary (all of them are counted)."""
ROW_ISSUES_SHOWN = 5
"""Unused rows quoted in the terminal summary (the report keeps :data:`MAX_LISTED_ISSUES`)."""
REPORT_NAME = "extract-features.json"
"""The run's report in ``OUT``: counts and every failure with its reason."""


@dataclass(frozen=True)
class FeatureJob:
    """One medium to extract."""

    medium: Media
    """What to read (resolved in its media root)."""
    target: Path
    """The features file to write (absolute)."""
    name: str
    """``target`` relative to ``OUT``, for messages."""
    row_path: str
    """The medium's path as its first row writes it."""
    where: str
    """``file:line`` of the first row using it."""


@dataclass
class ExtractionPlan:
    """Everything to extract, and what was left out of the data and why."""

    out: Path
    """The features folder (absolute)."""
    jobs: list[FeatureJob]
    """One job per distinct medium, in data order."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(name, reason)`` of media that cannot be extracted as planned (target collisions)."""
    rows: int = 0
    """Rows read over all sources."""
    samples: int = 0
    """Samples the mixture selects (text-only ones included)."""
    skipped_rows: Counter = field(default_factory=Counter)
    """Rows not used, by reason (as ``data check`` counts them)."""
    issues: list[str] = field(default_factory=list)
    """The first :data:`MAX_LISTED_ISSUES` unused rows, as ``file:line: message``."""


def plan_extraction(
    data: str | Path, media_root: str | Path, out: str | Path, *, strict: bool = False
) -> ExtractionPlan:
    """The jobs of extracting the media of ``data`` (a data file or a mixture YAML) into ``out``.

    Args:
        data: a JSON/JSONL data file or a mixture YAML.
        media_root: the data root (media paths of a data file, and every relative path of a mixture, start in it).
        out: the features folder; it must not be the data root (features beside their media are never read: a row
            path resolves to the medium itself first).
        strict: raise on the first unusable row instead of counting it.

    Raises:
        FileNotFoundError: for a missing data file or media root.
        ValueError: for an ``out`` that is the data root, a media root outside the data root, or (``strict``) the first
            unusable row.
    """
    loaded = load_mixture(data, media_root, strict=strict)
    root = os.path.abspath(media_root)  # not resolved: a media root may be a symlink to another disk
    out = Path(os.path.abspath(out))
    plan = ExtractionPlan(out=out, jobs=[])
    by_target: dict[Path, FeatureJob] = {}
    collided: dict[Path, list[str]] = {}
    for index, source in enumerate(loaded.sources):
        roots = _source_roots(loaded, index, Path(root))
        rel = {key: _relative_root(folder, root, source.spec.label) for key, folder in roots.items()}
        for key, folder in roots.items():
            if os.path.realpath(out / rel[key]) == os.path.realpath(folder):
                raise ValueError(
                    f"--out {out} would put features beside the media of {folder}, where a row path resolves to the "
                    "medium itself before its .safetensors; pass another --out (e.g. a features folder beside the "
                    "media root)"
                )
        plan.rows += source.data.rows
        plan.samples += len(source.selected)
        plan.skipped_rows.update(source.data.skipped)
        plan.issues.extend(str(issue) for issue in source.data.issues[: MAX_LISTED_ISSUES - len(plan.issues)])
        for sample, key, values in _media_rows(source):
            for value, medium in zip(values, sample.media, strict=True):
                name = os.path.normpath(os.path.join(rel["image" if key == "image" else "video"], target_name(value)))
                job = FeatureJob(medium, out / name, name, value, sample.where)
                first = by_target.setdefault(job.target, job)
                if first.medium.path != medium.path:
                    collided.setdefault(job.target, [first.row_path]).append(value)
    for target, names in collided.items():
        shown = " and ".join(repr(n) for n in dict.fromkeys(names))
        plan.failed.append((by_target[target].name, f"media {shown} would both be written here; rename one of them"))
    plan.jobs = [job for target, job in by_target.items() if target not in collided]
    return plan


def _source_roots(loaded: LoadedMixture, index: int, root: Path) -> dict[str, str]:
    """Media roots of source ``index`` by row key kind, as :func:`load_mixture` finds them (absolute, unresolved)."""
    spec = loaded.sources[index].spec
    media = root / spec.media_root if spec.media_root is not None else root
    video = root / spec.video_root if spec.video_root is not None else media
    image = root / spec.image_root if spec.image_root is not None else media
    return {"video": os.path.abspath(video), "image": os.path.abspath(image)}


def _relative_root(folder: str, root: str, label: str) -> str:
    rel = os.path.relpath(folder, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(
            f"source {label!r} reads media from {folder}, outside the data root {root}, so its features have no "
            "place under --out; write its roots relative to the data root, or extract that source on its own with "
            "--media-root set to its media folder"
        )
    return rel


def _media_rows(source) -> Iterator[tuple[object, str, list[str]]]:
    """``(sample, media key, row paths)`` of the selected samples with media, reading the rows' own paths.

    ``Sample.media`` holds resolved paths; the features file is named after the path the row writes (a symlink's
    target may be named otherwise), so the rows are read once more.
    """
    wanted = {sample.line: sample for sample in source.selected if sample.media}
    if not wanted:
        return
    for line, row in read_rows(source.data.path):
        sample = wanted.get(line)
        if sample is None:
            continue
        key = next(k for k in MEDIA_KEYS if row.get(k) is not None)
        yield sample, key, [row[key]] if isinstance(row[key], str) else list(row[key])


def shard(jobs: list[FeatureJob], rank: int, world_size: int) -> list[FeatureJob]:
    """The jobs of process ``rank`` of ``world_size``: ``jobs[rank::world_size]``.

    Raises:
        ValueError: unless ``0 <= rank < world_size``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return jobs[rank::world_size]


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ExtractionSummary:
    """What a run (one rank, or all of them merged) did."""

    extracted: int = 0
    """Files written."""
    replaced: int = 0
    """Of those, files that replaced an incomplete one (truncated, unreadable)."""
    copied: int = 0
    """Media that were features already, linked or copied to their target."""
    skipped_existing: int = 0
    """Files already done (by this extractor; for copied features, any complete file)."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(name, reason)`` of media that could not be extracted, each once."""
    frames: int = 0
    """Frames encoded."""
    removed_partials: int = 0
    """Stale ``.partial`` files removed at start."""
    seconds: float = 0.0
    """Wall time (the longest rank's, when merged)."""

    def merge(self, other: ExtractionSummary) -> ExtractionSummary:
        """Both summaries added up (ranks run at once: the time is the longer one)."""
        return ExtractionSummary(
            self.extracted + other.extracted,
            self.replaced + other.replaced,
            self.copied + other.copied,
            self.skipped_existing + other.skipped_existing,
            self.failed + other.failed,
            self.frames + other.frames,
            self.removed_partials + other.removed_partials,
            max(self.seconds, other.seconds),
        )


def run_extraction(
    jobs: list[FeatureJob],
    extractor,
    *,
    overwrite: bool = False,
    workers: int = 2,
    progress: bool = False,
    position: int = 0,
    desc: str = "features",
) -> ExtractionSummary:
    """Extract ``jobs`` (one rank's shard) with ``extractor``, skipping files already done.

    Stale ``.partial`` files of these jobs are removed first. Media are decoded and preprocessed on ``workers``
    threads, at most ``workers + 1`` ahead of the tower, in job order. A medium that cannot be read (a
    :class:`~flash_vstream.video.VideoError`, an unreadable file) or does not fit in device memory is recorded
    once in ``failed`` and the run goes on.

    Args:
        jobs: the jobs, in order.
        extractor: a :class:`~flash_vstream.train.features.FeatureExtractor`.
        overwrite: extract every job again, also files done or written by another extractor.
        workers: decoding threads (0: decode on the calling thread).
        progress: draw a progress bar on stderr.
        position: the bar's line (the rank, so several ranks' bars stack).
        desc: the bar's label.

    Returns:
        This shard's :class:`ExtractionSummary`.
    """
    from tqdm import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers (--workers) must be an integer >= 0, got {workers!r}")
    start = time.perf_counter()
    summary = ExtractionSummary(removed_partials=remove_partials(partial_path(job.target) for job in jobs))
    todo = []
    for job in jobs:
        status = feature_status(job.target, extractor.fingerprint)
        if job.medium.kind == "features":  # nothing to compute: any complete file is the one linked before
            if status.state in ("done", "foreign") and not overwrite:
                summary.skipped_existing += 1
            else:
                copy_features(job.medium.path, job.target)
                summary.copied += 1
        elif status.state == "done" and not overwrite:
            summary.skipped_existing += 1
        elif status.state == "foreign" and not overwrite:
            summary.failed.append((job.name, f"{status.detail}; pass --overwrite to replace it, or use a new --out"))
        else:
            todo.append((job, status.state == "incomplete"))
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="medium", position=position,
               file=sys.stderr, disable=not progress, dynamic_ncols=True)  # fmt: skip
    try:
        for (job, replacing), pixels in _prefetched(todo, lambda item: extractor.read(item[0].medium), workers):
            reason = _extract_one(job, pixels, extractor, summary)
            if reason is None:
                summary.replaced += replacing
            else:
                summary.failed.append((job.name, reason))
            bar.update(1)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _extract_one(job: FeatureJob, pixels, extractor, summary: ExtractionSummary) -> str | None:
    """Encode and write one medium; the failure reason, or ``None`` when written."""
    if isinstance(pixels, BaseException):
        return _reason(pixels)
    try:
        feature = extractor.encode(pixels)
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return f"out of device memory encoding {len(pixels.values)} frames; lower --batch-size"
    write_features(job.target, feature, extractor.metadata(pixels, job.row_path))
    summary.extracted += 1
    summary.frames += len(pixels.values)
    return None


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


_READ_ERRORS = (ValueError, OSError)  # VideoError is a ValueError; a permission error an OSError


def _prefetched(items: list, read: Callable, workers: int) -> Iterator[tuple[object, object]]:
    """``(item, read(item))`` in order, reads running ahead on ``workers`` threads; a read error is yielded as is."""
    if workers == 0:
        for item in items:
            try:
                yield item, read(item)
            except _READ_ERRORS as err:
                yield item, err
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="extract-read") as pool:
        pending: deque[tuple[object, Future]] = deque()
        queue = iter(items)
        for item in queue:
            pending.append((item, pool.submit(read, item)))
            if len(pending) > workers:
                break
        while pending:
            item, future = pending.popleft()
            try:
                result = future.result()
            except _READ_ERRORS as err:
                result = err
            next_item = next(queue, None)
            if next_item is not None:
                pending.append((next_item, pool.submit(read, next_item)))
            yield item, result


# ----------------------------------------------------------------------------------------------------------
# After the run
# ----------------------------------------------------------------------------------------------------------


def remove_orphan_partials(plan: ExtractionPlan) -> int:
    """Remove ``.partial`` files under ``plan.out`` that belong to no job (no rank of this run writes them)."""
    if not plan.out.is_dir():
        return 0
    return remove_partials(orphan_partials(plan.out, {job.target for job in plan.jobs}))


_ROOT_KEYS = ("media_root", "image_root", "video_root")


def write_features_mixture(data: str | Path, media_root: str | Path, out: Path) -> Path | None:
    """For a mixture ``data``, write ``out/<its name>`` with absolute data-file paths; ``None`` for a data file.

    The rest of the mixture (strategies, seeds, media roots relative to the data root) is kept, so with ``out`` as
    the data root (the default for a mixture in ``out``) every medium resolves to its features.
    """
    import yaml

    data = Path(data)
    if data.suffix.lower() not in MIXTURE_SUFFIXES:
        return None
    mixture = yaml.safe_load(data.read_text())
    root = os.path.abspath(media_root)
    for source in mixture["sources"]:
        source["path"] = os.path.abspath(os.path.join(root, source["path"]))
        for key in _ROOT_KEYS:  # relative to the data root, so they name the mirrored folders under ``out``
            if source.get(key) is not None:
                source[key] = os.path.relpath(os.path.abspath(os.path.join(root, source[key])), root)
    target = out / data.name
    if target.resolve() == data.resolve():
        raise ValueError(f"--data {data} lies in --out; keep the mixture outside the features folder")
    header = (
        f"# flash-vstream data check --data {target}\n"
        f"#\n# Written by flash-vstream extract-features from {data.resolve()}: the same sources, read from the\n"
        f"# features in this folder (the data files stay where they are).\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(header + yaml.safe_dump(mixture, sort_keys=False))
    os.replace(partial, target)
    return target


def features_hint(data: str | Path, out: Path, mixture: Path | None) -> str:
    """How to read the features: the ``data check`` command of the output."""
    if mixture is not None:
        return f"flash-vstream data check --data {mixture} --media-root {out}"
    return f"flash-vstream data check --data {data} --media-root {out}"


def summary_record(plan: ExtractionPlan, summary: ExtractionSummary, world_size: int) -> dict:
    """The run as a JSON-ready dict (written to ``OUT/`` :data:`REPORT_NAME`): counts and every failure."""
    return {
        "out": str(plan.out),
        "processes": world_size,
        "rows": plan.rows,
        "samples": plan.samples,
        "media": len(plan.jobs) + len(plan.failed),
        "extracted": summary.extracted,
        "replaced_incomplete": summary.replaced,
        "copied_features": summary.copied,
        "skipped_existing": summary.skipped_existing,
        "failed": [{"file": name, "reason": reason} for name, reason in plan.failed + summary.failed],
        "frames": summary.frames,
        "seconds": round(summary.seconds, 3),
        "removed_partials": summary.removed_partials,
        "rows_not_used": dict(sorted(plan.skipped_rows.items())),
        "row_issues": plan.issues,
    }


def render_summary(record: dict, hint: str, max_listed: int = MAX_LISTED_ISSUES) -> str:
    """The terminal summary of :func:`summary_record`'s dict."""
    failed = record["failed"]
    lines = [
        f"extract-features: {record['media']} media from {record['rows']} rows ({record['samples']} samples), "
        f"{record['processes']} process{'es' if record['processes'] > 1 else ''}",
        f"  extracted {record['extracted']} ({record['frames']} frames, {record['seconds']:.1f} s"
        + (f", {record['replaced_incomplete']} replacing incomplete files" if record["replaced_incomplete"] else "")
        + f"); skipped {record['skipped_existing']} already done; failed {len(failed)}",
    ]
    if failed:
        lines.append(f"  failed ({min(len(failed), max_listed)} of {len(failed)} listed):")
        lines.extend(f"    {item['file']}: {item['reason']}" for item in failed[:max_listed])
    if record["rows_not_used"]:
        reasons = ", ".join(f"{reason} {count}" for reason, count in record["rows_not_used"].items())
        lines.append(f"  rows not used (as data check counts them): {reasons}")
        lines.extend(f"    {issue}" for issue in record["row_issues"][:ROW_ISSUES_SHOWN])
    if record["copied_features"]:
        lines.append(f"  media that were features already, linked into the output: {record['copied_features']}")
    if record["removed_partials"]:
        lines.append(f"  removed {record['removed_partials']} .partial file(s) left by an interrupted run")
    lines.append(f"features in {record['out']}; check them with: {hint}")
    return "\n".join(lines)

