r"""``flash-vstream extract-features``: the CLIP features of a data set's media, in the layout training reads.

One process, or one per GPU under torchrun (each takes every ``WORLD_SIZE``-th medium)::

    flash-vstream extract-features --data data/train.jsonl --media-root data/videos --out data/features \
        --model IVGSZ/Flash-VStream-7b
    torchrun --nproc_per_node 8 -m flash_vstream.cli extract-features --data star_stage2_mixture.yaml \
        --media-root data --out data/features --vision-tower openai/clip-vit-large-patch14

Every medium the data selects is read at 1 fps (the STAR family's sampler), run through the CLIP tower of the STAR
checkpoint ``--model`` (or the CLIP checkpoint ``--vision-tower``; default the released tower) and written as
``{"feature": fp16 (T, 256, 1024)}`` (``(256, 1024)`` for an image) to ``OUT/<row path>.safetensors``. Reading the
same data with ``--media-root OUT`` then finds the features (a mixture is rewritten into ``OUT``). A rerun skips
finished files and replaces partial ones; a medium that cannot be read is reported once and the run goes on. The
exit code is 0, or 1 when some medium failed (listed in the summary and in ``OUT/extract-features.json``).

Only the standard library is imported here; :func:`add_extract_command` registers the command on the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ASPECTS = ("pad", "crop")
DESCRIPTION = (
    "Write the CLIP features of every medium a data file or mixture selects as OUT/<row path>.safetensors "
    "({'feature': fp16 (T, 256, 1024)} at 1 fps; (256, 1024) for an image), so that the same data read with "
    "--media-root OUT trains on them. Under torchrun each rank takes every WORLD_SIZE-th medium. A rerun skips "
    "finished files and replaces partial ones; unreadable media are reported once. Exit code 1 when some failed."
)


def add_extract_command(subparsers) -> None:
    """Add ``extract-features`` to the ``flash-vstream`` subparsers (handler: ``args.func(args) -> int``)."""
    parser = subparsers.add_parser(
        "extract-features",
        help="write the CLIP features of a data file's media (safetensors at 1 fps, fp16) for STAR training",
        description=DESCRIPTION,
    )
    parser.add_argument("--data", required=True, help="a .json/.jsonl data file or a mixture .yaml")
    parser.add_argument(
        "--media-root", required=True, help="folder media paths (and a mixture's relative paths) start in"
    )
    parser.add_argument("--out", required=True, help="features folder (mirrors the media root's layout)")
    tower = parser.add_mutually_exclusive_group()
    tower.add_argument("--model", help="STAR checkpoint: its vision tower, layer and image_aspect_ratio")
    tower.add_argument(
        "--vision-tower", help="CLIP checkpoint folder or Hub id (default openai/clip-vit-large-patch14)"
    )
    parser.add_argument(
        "--image-aspect-ratio", choices=ASPECTS, default=None, help="with --vision-tower: pad (default) or crop"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="frames per forward pass of the tower")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (under torchrun: each rank's GPU)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default float16 on GPU, float32 on CPU)")
    parser.add_argument("--frames-fps", type=float, default=1.0, help="frame rate of frame folders (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads per process (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="extract again files already done")
    parser.add_argument("--strict", action="store_true", help="fail on the first unusable row instead of counting")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    """The ``extract-features`` handler: extract this rank's shard, print the merged summary on rank 0.

    Returns:
        0, or 1 when some medium could not be extracted.

    Raises:
        ValueError: for a bad flag value or unusable data (with ``--strict``).
        FileNotFoundError: for a missing data file, media root or checkpoint.
    """
    _check_args(args)
    from flash_vstream.distributed import cleanup_distributed, init_distributed

    rank, _, world_size, rank_device = init_distributed()
    finished = False
    try:
        # --- setup: every rank builds the same plan, so the shards need no communication
        from flash_vstream.train import extraction

        plan = extraction.plan_extraction(args.data, args.media_root, args.out, strict=args.strict)
        extractor = _extractor(args, _device(args.device, rank_device, world_size))
        if rank == 0:
            extraction.remove_orphan_partials(plan)
        # --- extract
        mine = extraction.shard(plan.jobs, rank, world_size)
        show = not args.no_progress and sys.stderr.isatty()
        label = f"rank {rank}" if world_size > 1 else "features"
        summary = extraction.run_extraction(
            mine, extractor, overwrite=args.overwrite, workers=args.workers, progress=show, position=rank, desc=label
        )
        # --- report
        summaries = _gather(summary, world_size)
        merged = summaries[0]
        for other in summaries[1:]:
            merged = merged.merge(other)
        record = extraction.summary_record(plan, merged, world_size)
        if rank == 0:
            mixture = extraction.write_features_mixture(args.data, args.media_root, plan.out)
            _write_report(plan.out / extraction.REPORT_NAME, record)
            print(extraction.render_summary(record, extraction.features_hint(args.data, plan.out, mixture)))
        finished = True
        return 1 if record["failed"] else 0
    finally:
        cleanup_distributed(wait=finished)  # the ranks finish together (they just gathered their summaries)


def _check_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if not args.frames_fps > 0:
        raise ValueError(f"--frames-fps must be > 0, got {args.frames_fps}")
    if args.model is not None and args.image_aspect_ratio is not None:
        raise ValueError(
            "--image-aspect-ratio comes from the --model checkpoint (its image_aspect_ratio); drop the flag, or pass "
            "a CLIP tower with --vision-tower instead"
        )


def _device(requested: str | None, rank_device, world_size: int):
    """The rank's own device under torchrun (or by default); otherwise the one asked for."""
    if requested in (None, "auto") or (world_size > 1 and requested == "cuda"):
        return rank_device
    from flash_vstream.model.loading import resolve_device

    return resolve_device(requested)


def _extractor(args: argparse.Namespace, device):
    from flash_vstream.train.features import DEFAULT_VISION_TOWER, FeatureExtractor

    common = {"device": device, "dtype": args.dtype, "batch_size": args.batch_size, "frames_fps": args.frames_fps}
    if args.model is not None:
        return FeatureExtractor.from_star_checkpoint(args.model, **common)
    return FeatureExtractor.from_vision_tower(
        args.vision_tower or DEFAULT_VISION_TOWER, aspect=args.image_aspect_ratio or "pad", **common
    )


def _gather(summary, world_size: int) -> list:
    """Every rank's summary, in rank order (all ranks get them: each returns the same exit code)."""
    if world_size == 1:
        return [summary]
    import torch.distributed as dist

    summaries = [None] * world_size
    dist.all_gather_object(summaries, summary)
    return summaries


def _write_report(path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    """``python -m flash_vstream.train.extract_cli ...``: the command on its own (same flags, same exit codes)."""
    parser = argparse.ArgumentParser(prog="flash-vstream")
    add_extract_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["extract-features", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"flash-vstream extract-features: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
