"""The one evaluation runner: load a benchmark, sample frames, ask the model, append predictions, score.

Data-parallel under ``torchrun``: rank ``r`` of ``w`` takes items ``r, r + w, ...`` and appends to its own
``predictions.rank{r}-of-{w}.jsonl`` (one durable line per item, see `predictions`). A rerun skips finished
ids, so an interrupted run resumes where it stopped. When every shard is complete the shards are merged into
``predictions.jsonl`` and scored into ``results.json`` / ``results.md`` (plus ``submission.{json,csv}`` for
EgoSchema); with ``torch.distributed`` initialised, rank 0 does this after a barrier.

    python -m flash_vstream.cli eval run --benchmark mvbench --model M --data DATA_ROOT/MVBench --out runs/mvb
    torchrun --nproc_per_node=8 -m flash_vstream.cli eval run --benchmark videomme --model M --data D --out O
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flash_vstream_eval.benchmarks import Benchmark, get_benchmark
from flash_vstream_eval.items import AnnotationError, Item, safe_join
from flash_vstream_eval.predictions import PredictionWriter, recover_predictions
from flash_vstream_eval.profiles import Profile, Rules, get_profile
from flash_vstream_eval.report import atomic_write, write_results
from flash_vstream_eval.scoring import Judge, score_records, submission_files
from flash_vstream_eval.subtitles import read_srt, select_subtitles, uniform_timestamps

__all__ = ["distributed_rank_world", "run_benchmark"]

Reader = Callable[..., Any]


def distributed_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` if initialised, else torchrun's env, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _barrier() -> bool:
    """Wait for every rank when torch.distributed is initialised; True if it was."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        return True
    return False


def _check_run_config(out_dir: Path, config: dict[str, Any]) -> None:
    """Write the run's config, or refuse to resume into a folder written by a different run."""
    path = out_dir / "run_config.json"
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (previous.get(k), v) for k, v in config.items() if previous.get(k) != v}
        if changed:
            raise ValueError(
                f"{out_dir} holds a run with different settings {changed} (old, new); "
                "pass a new --out or the "
                "same flags to resume."
            )
        return
    atomic_write(path, json.dumps(config, indent=2) + "\n")


def _sampler(rules: Rules, item: Item):
    from flash_vstream.video import FrameSampler

    plan = rules.frames
    if plan.policy == "fps":
        return FrameSampler(
            "fps",
            target_fps=plan.target_fps,
            min_frames=plan.min_frames,
            max_frames=plan.max_frames,
            start=item.start,
            end=item.end,
        )
    return FrameSampler(plan.policy, num_frames=plan.num_frames, start=item.start, end=item.end)


def _subtitle_text(root: Path, item: Item, rules: Rules, clip: Any) -> str:
    lines = read_srt(safe_join(root, item.subtitles)) if item.subtitles else []
    if rules.subtitle_frames:
        times = uniform_timestamps(clip.total_frames, clip.native_fps, rules.subtitle_frames)
    else:
        times = clip.timestamps
    return select_subtitles(lines, times)


def _predict(
    item: Item, root: Path, spec: Benchmark, rules: Rules, model: Callable[[], Any], reader: Reader
) -> dict:
    """One item's predictions record: ``{"id", "prediction", "frames"}`` or ``{"id", "skipped": reason}``.

    ``model`` returns the model; it is called only when a video was read, so skipped items load nothing.
    """
    from flash_vstream.video import VideoError

    path = safe_join(root, item.video)
    if not path.exists():
        return {"id": item.id, "skipped": f"missing video: {item.video}"}
    try:
        clip = reader(path, sampler=_sampler(rules, item), frames_fps=item.frames_fps)
    except (VideoError, OSError, ValueError) as err:
        return {"id": item.id, "skipped": f"unreadable video {item.video}: {err}"}
    subtitles = _subtitle_text(root, item, rules, clip) if spec.with_subtitles else None
    # Frames only (no ``video=``): models take exactly one visual input, and these are the profile's frames.
    reply = model().answer(
        rules.prompt(item, subtitles),
        frames=clip.frames,
        timestamps=clip.timestamps,
        assistant_prefix=rules.assistant_prefix,
        max_new_tokens=rules.max_new_tokens,
    )
    return {"id": item.id, "prediction": reply, "frames": int(len(clip.frames))}


def _shard_path(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / f"predictions.rank{rank}-of-{world}.jsonl"


def _run_shard(
    items: list[Item],
    path: Path,
    root: Path,
    spec: Benchmark,
    rules: Rules,
    model: Any,
    reader: Reader,
    progress: bool,
    rank: int,
) -> None:
    from tqdm.auto import tqdm

    # Skipped items (missing or unreadable video) are tried again: the user may have added the video since.
    # A new record for the same id is appended; merging keeps the last record of each id.
    done = {str(r["id"]) for r in recover_predictions(path) if not r.get("skipped")}
    pending = [item for item in items if item.id not in done]
    if not pending:
        return
    loaded: list[Any] = []

    def get_model() -> Any:
        if not loaded:
            if isinstance(model, str):
                from flash_vstream import load_model

                loaded.append(load_model(model))
            else:
                loaded.append(model)
        return loaded[0]

    with PredictionWriter(path) as writer:
        for item in tqdm(
            pending, desc=f"{spec.name} [rank {rank}]", disable=not progress, dynamic_ncols=True
        ):
            writer.write(_predict(item, root, spec, rules, get_model, reader))


def _merge(out_dir: Path, items: list[Item], world: int) -> list[dict] | None:
    """All shards' records in item order, or ``None`` while some shard is unfinished."""
    by_id: dict[str, dict] = {}
    for rank in range(world):
        # Read only: another rank may be appending to its shard right now.
        for record in recover_predictions(_shard_path(out_dir, rank, world), truncate=False):
            by_id[str(record["id"])] = record
    if any(item.id not in by_id for item in items):
        return None
    return [by_id[item.id] for item in items]


def _finish(
    out_dir: Path,
    items: list[Item],
    records: list[dict],
    spec: Benchmark,
    profile: Profile,
    judge: Judge | None,
) -> dict[str, Any]:
    atomic_write(
        out_dir / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    )
    if spec.open_ended and judge is None:
        skipped = [{"id": r["id"], "reason": r["skipped"]} for r in records if r.get("skipped")]
        results = {
            "benchmark": spec.name,
            "profile": profile.name,
            "metrics": {},
            "counts": {"items": len(items), "predicted": len(items) - len(skipped), "skipped": len(skipped)},
            "breakdowns": {},
            "skipped": skipped,
            "note": "Open-ended answers need a judge: run `flash-vstream eval score` with --judge-model "
            "(and --judge-base-url) on predictions.jsonl.",
        }
    else:
        results = score_records(spec, items, records, profile, judge)
    if spec.submission:
        for name, text in submission_files(items, records, profile).items():
            atomic_write(out_dir / name, text)
    write_results(out_dir, results)
    return results


def run_benchmark(
    benchmark: str | Benchmark,
    model: Any,
    data_root: str | Path,
    out_dir: str | Path,
    profile: str | Profile = "flash-vstream",
    limit: int | None = None,
    *,
    annotations: str | None = None,
    judge: Judge | None = None,
    reader: Reader | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Evaluate ``model`` on a benchmark, resumably; return the results (``None`` on ranks that do not merge).

    Args:
        benchmark: Benchmark name (see `benchmarks.BENCHMARKS`) or spec.
        model: A `model_api.VideoQAModel`, or a name/path for ``flash_vstream.load_model`` (loaded only when
            some item still needs an answer).
        data_root: Folder holding the benchmark's annotations and media.
        out_dir: Run folder for predictions and results; reuse it to resume.
        profile: Scoring profile name or object.
        limit: Evaluate only the first ``limit`` questions.
        annotations: Annotation file, folder or HF dataset id to use instead of auto-detection.
        judge: ``judge(question, answer, prediction) -> verdict`` for open-ended sets; without one the run
            stops after writing predictions.
        reader: ``reader(path, sampler=..., frames_fps=...) -> clip``; default
        ``flash_vstream.video.read_video``.
        progress: Show a progress bar.

    Raises:
        AnnotationError: For unusable annotations (file and record named).
        ValueError: For a bad benchmark/profile/limit, or an ``out_dir`` written with other settings.
    """
    spec, prof = get_benchmark(benchmark), get_profile(profile)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of questions, got {limit}.")
    root, out_dir = Path(data_root), Path(out_dir)
    if not root.is_dir():
        raise AnnotationError(
            f"data root {root} is not a directory; pass --data pointing at the benchmark folder."
        )
    rules = prof.for_family(spec.family)
    items = spec.load(root, annotations)[:limit]
    rank, world = distributed_rank_world()
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _check_run_config(
            out_dir,
            {
                "benchmark": spec.name,
                "profile": prof.name,
                "limit": limit,
                "annotations": annotations,
                "data_root": str(root.resolve()),
            },
        )
    if reader is None:
        from flash_vstream.video import read_video as reader
    _run_shard(
        items[rank::world],
        _shard_path(out_dir, rank, world),
        root,
        spec,
        rules,
        model,
        reader,
        progress,
        rank,
    )
    if _barrier() and rank != 0:
        return None
    records = _merge(out_dir, items, world)
    if records is None:
        return None
    return _finish(out_dir, items, records, spec, prof, judge)
