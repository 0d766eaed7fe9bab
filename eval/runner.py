"""The one evaluation runner: load a benchmark, sample frames, ask the model, append predictions, score.

Data-parallel under ``torchrun``: `flash_vstream.distributed.init_distributed` gives each process its rank and
its own device (``cuda:{local_rank}``), rank ``r`` of ``w`` takes items ``r, r + w, ...`` and appends to its own
``predictions.rank{r}-of-{w}.jsonl`` (one durable line per item, see `predictions`). A rerun skips finished ids,
so an interrupted run resumes where it stopped; ``run_config.json`` makes sure it is the same run (see
`run_folder`). The rank that finds every shard complete (the last to finish) merges them into
``predictions.jsonl`` and scores them into ``results.json`` / ``results.md`` (plus ``submission.{json,csv}`` for
EgoSchema); no collective waits on the slowest rank, so no NCCL timeout can end a long run.

Real-time benchmarks (RVS-Ego, RVS-Movie: ``Benchmark.realtime``) are run by `realtime.run_realtime_shard`
instead: each video played once through a ``StreamSession``, every question asked at its annotated time, ranks
taking whole videos. ``offline=True`` (``eval run --offline``) evaluates them the offline way, each question on
its window ``[0, time]``; so does a ready model object that is not a loaded ``FlashVStream`` (it cannot stream).
``run_config.json`` records which (``realtime``), so a resumed run never mixes the two.

    python -m flash_vstream.cli eval run --benchmark mvbench --model M --data DATA_ROOT/MVBench --out runs/mvb
    torchrun --nproc_per_node=8 -m flash_vstream.cli eval run --benchmark videomme --model M --data D --out O
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flash_vstream_eval.benchmarks import Benchmark, get_benchmark
from flash_vstream_eval.items import AnnotationError, Item, MalformedRecord, safe_join
from flash_vstream_eval.model_api import ModelSpec, model_identity, rank_device
from flash_vstream_eval.predictions import PredictionWriter, recover_predictions
from flash_vstream_eval.profiles import Profile, Rules, get_profile
from flash_vstream_eval.realtime import can_stream, run_realtime_shard, shard_by_video
from flash_vstream_eval.report import atomic_write, write_results
from flash_vstream_eval.run_folder import prepare_run_folder
from flash_vstream_eval.scoring import Judge, malformed_rows, score_records, skipped_rows, submission_files
from flash_vstream_eval.subtitles import read_srt, select_subtitles, uniform_timestamps

if TYPE_CHECKING:
    import torch

    from flash_vstream.distributed import DistInfo

__all__ = ["run_benchmark"]

Reader = Callable[..., Any]


def _barrier() -> None:
    """Wait for every rank when a process group is initialised (a no-op for a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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
    item: Item,
    root: Path,
    spec: Benchmark,
    rules: Rules,
    model: Callable[[], Any],
    reader: Reader,
    unreadable: dict[tuple, str],
) -> dict:
    """One item's predictions record: ``{"id", "prediction", "frames"}`` or ``{"id", "skipped", "video"}``.

    ``model`` returns the model; it is called only when a video was read, so skipped items load nothing.
    ``unreadable`` remembers videos that failed to decode (per window), so questions sharing a broken video
    do not decode it again.
    """
    from flash_vstream.video import VideoError

    path = safe_join(root, item.video)
    if not path.exists():
        return {"id": item.id, "skipped": f"missing video: {item.video}", "video": item.video}
    key = (item.video, item.start, item.end, item.frames_fps)
    if key not in unreadable:
        try:
            clip = reader(path, sampler=_sampler(rules, item), frames_fps=item.frames_fps)
        except (VideoError, OSError, ValueError) as err:
            unreadable[key] = f"unreadable video: {item.video} ({str(err).strip() or type(err).__name__})"
    if key in unreadable:
        return {"id": item.id, "skipped": unreadable[key], "video": item.video}
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
    load: Callable[[], Any],
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
            loaded.append(load())
        return loaded[0]

    unreadable: dict[tuple, str] = {}
    with PredictionWriter(path) as writer:
        for item in tqdm(
            pending, desc=f"{spec.name} [rank {rank}]", disable=not progress, dynamic_ncols=True
        ):
            writer.write(_predict(item, root, spec, rules, get_model, reader, unreadable))


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
    malformed: list[MalformedRecord],
) -> dict[str, Any]:
    atomic_write(
        out_dir / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    )
    if spec.open_ended and judge is None:
        skipped = skipped_rows(records)
        results = {
            "benchmark": spec.name,
            "profile": profile.name,
            "metrics": {},
            "counts": {
                "items": len(items),
                "predicted": len(items) - len(skipped),
                "skipped": len(skipped),
                "malformed": len(malformed),
            },
            "breakdowns": {},
            "skipped": skipped,
            "malformed": malformed_rows(malformed),
            "note": "Open-ended answers need a judge: run `flash-vstream eval score` with --judge-model "
            "(and --judge-base-url) on predictions.jsonl.",
        }
    else:
        results = score_records(spec, items, records, profile, judge, malformed)
    if spec.submission:
        for name, text in submission_files(items, records, profile).items():
            atomic_write(out_dir / name, text)
    write_results(out_dir, results)
    return results


def _as_model(model: Any) -> Any:
    if isinstance(model, (str, Path)):
        return ModelSpec(str(model))
    return model


def _run_config(
    spec: Benchmark,
    prof: Profile,
    rules: Rules,
    root: Path,
    limit: int | None,
    annotations: str | None,
    model: Any,
    device: torch.device,
    world_size: int,
    realtime: bool,
) -> dict[str, Any]:
    """What this run is (see `run_folder`): compared with the folder's ``run_config.json`` before anything runs."""
    extra = {"realtime": realtime} if spec.realtime else {}  # other benchmarks' run folders are unchanged
    return {
        "benchmark": spec.name,
        "profile": prof.name,
        "limit": limit,
        "annotations": annotations,
        "data_root": str(root.resolve()),
        "max_new_tokens": rules.max_new_tokens,
        "model": model_identity(model, device),
        "model_given": model.name_or_path if isinstance(model, ModelSpec) else None,
        "device": str(device),
        "world_size": world_size,
        **extra,
    }


def _run_commentary(spec: Benchmark, model: Any, data_root: str | Path, out_dir: str | Path, given: list[str],
                    **kwargs: Any) -> dict[str, Any] | None:
    """A live-commentary benchmark: `inf_streams_run.run_inf_streams` with its default settings.

    Raises:
        ValueError: When an argument of the question-answering runner was given (``given``): none applies.
    """
    if given:
        raise ValueError(
            f"{', '.join(given)} of run_benchmark do not apply to {spec.name}: its commentary is streamed with the "
            f"model's own per-second budget and judged pairwise afterwards (`flash-vstream eval score --benchmark "
            f"{spec.name} --reference REF.jsonl`). Run `flash-vstream eval run --benchmark {spec.name}`, or call "
            "flash_vstream_eval.inf_streams_run.run_inf_streams for its settings."
        )
    from flash_vstream_eval.inf_streams_run import run_inf_streams

    return run_inf_streams(_as_model(model), data_root, out_dir, **kwargs)


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
    max_new_tokens: int | None = None,
    overwrite: bool = False,
    strict: bool = False,
    dist: DistInfo | None = None,
    offline: bool = False,
) -> dict[str, Any] | None:
    """Evaluate ``model`` on a benchmark, resumably; return the results (``None`` on ranks that do not merge).

    Args:
        benchmark: Benchmark name (see `benchmarks.BENCHMARKS`) or spec. A live-commentary one (``inf_streams``,
            ``Benchmark.commentary``) is handed to `inf_streams_run.run_inf_streams` with its default settings
            (``model``, ``data_root``, ``out_dir``, ``limit``, ``annotations``, ``overwrite``, ``progress``,
            ``dist``; the other arguments do not apply and are refused) and returns its results stub.
        model: A `model_api.VideoQAModel`, a `model_api.ModelSpec`, or a checkpoint name/path (a spec with
            default flags). A spec is loaded onto this rank's device only when some item still needs an answer.
        data_root: Folder holding the benchmark's annotations and media.
        out_dir: Run folder for predictions and results; reuse it to resume.
        profile: Scoring profile name or object.
        limit: Evaluate only the first ``limit`` questions.
        annotations: Annotation file, folder or HF dataset id to use instead of auto-detection.
        judge: ``judge(question, answer, prediction) -> verdict`` for open-ended sets; without one the run
            stops after writing predictions.
        reader: ``reader(path, sampler=..., frames_fps=...) -> clip``; default ``flash_vstream.video.read_video``.
        progress: Show a progress bar.
        max_new_tokens: Generation budget; default the profile's.
        overwrite: Move an old run's files aside and start over instead of refusing a different run.
        strict: Fail on the first malformed annotation record instead of skipping and counting it.
        dist: This process's `flash_vstream.distributed.DistInfo`; default `init_distributed()` (torchrun-aware).
        offline: For a real-time benchmark, ask each question offline on its window instead of on the live
            stream (see the module docstring); no effect on other benchmarks.

    Raises:
        AnnotationError: For unusable annotations (file and line named; with ``strict`` any malformed record).
        ValueError: For a bad benchmark/profile/limit/device/dtype/option, an ``out_dir`` holding another
            run's predictions (`run_folder.RunFolderError`), or a question-answering argument given for a
            live-commentary benchmark.
        FileNotFoundError: For a checkpoint that does not exist.
    """
    spec, prof = get_benchmark(benchmark), get_profile(profile)
    if spec.commentary:
        not_applicable = {"profile": prof.name != "flash-vstream", "judge": judge is not None,
                          "reader": reader is not None, "max_new_tokens": max_new_tokens is not None,
                          "strict": strict, "offline": offline}
        return _run_commentary(spec, model, data_root, out_dir, [k for k, given in not_applicable.items() if given],
                               annotations=annotations, limit=limit, overwrite=overwrite, progress=progress, dist=dist)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of questions, got {limit}.")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be a positive number of tokens, got {max_new_tokens}.")
    root, out_dir = Path(data_root), Path(out_dir)
    if not root.is_dir():
        raise AnnotationError(
            f"data root {root} is not a directory; pass --data pointing at the benchmark folder."
        )
    rules = prof.for_family(spec.family)
    if max_new_tokens is not None:
        rules = replace(rules, max_new_tokens=max_new_tokens)
    loaded = spec.load_items(root, annotations, strict=strict)
    items = loaded.items[:limit]
    if dist is None:
        from flash_vstream.distributed import init_distributed

        dist = init_distributed()
    model = _as_model(model)
    device = rank_device(model.device if isinstance(model, ModelSpec) else None, dist)
    realtime = spec.realtime and not offline and (isinstance(model, ModelSpec) or can_stream(model))
    config = _run_config(spec, prof, rules, root, limit, annotations, model, device, dist.world_size, realtime)
    prepare_run_folder(out_dir, config, rank=dist.rank, overwrite=overwrite, barrier=_barrier)
    if reader is None:
        from flash_vstream.video import read_video as reader
    load = (lambda: model.load(device)) if isinstance(model, ModelSpec) else (lambda: model)
    shard = _shard_path(out_dir, dist.rank, dist.world_size)
    if realtime:
        mine = shard_by_video(items, dist.rank, dist.world_size)
        run_realtime_shard(mine, shard, root, rules, load, progress, f"{spec.name} [rank {dist.rank}]")
    else:
        mine = items[dist.rank :: dist.world_size]
        _run_shard(mine, shard, root, spec, rules, load, reader, progress, dist.rank)
    records = _merge(out_dir, items, dist.world_size)
    if records is None:
        return None
    return _finish(out_dir, items, records, spec, prof, judge, loaded.malformed)
