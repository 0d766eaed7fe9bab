r"""``flash-vstream checkpoint``: DeepSpeed ZeRO checkpoints of training runs, outside training.

::

    flash-vstream checkpoint consolidate RUN/checkpoint-K --out DIR [--start DIR]
    flash-vstream checkpoint universal RUN/checkpoint-K

``consolidate`` gathers a ZeRO-1/2/3 checkpoint saved by any number of processes into a model folder that
``load_model`` loads (a LoRA run's adapters merged, the adapter in ``DIR/adapter/``); ``--start`` names the start
model's folder when it moved since training. ``universal`` writes the checkpoint's DeepSpeed universal checkpoint
beside it (``global_stepK_universal/``), which ``flash-vstream train`` otherwise writes itself the first time the
run resumes on another number of processes.

Only the standard library is imported here; the work imports the rest when it runs.
"""

from __future__ import annotations

import argparse

__all__ = ["add_checkpoint_command"]


def add_checkpoint_command(subparsers) -> None:
    """Add ``checkpoint`` with its ``consolidate`` and ``universal`` subcommands to the ``flash-vstream`` ones.

    Handlers return 0; bad input raises ``ValueError``/``FileNotFoundError`` (the CLI prints it as one line).
    """
    checkpoint = subparsers.add_parser("checkpoint", help="consolidate or convert DeepSpeed ZeRO checkpoints of runs")
    commands = checkpoint.add_subparsers(dest="checkpoint_command", required=True)
    gather = commands.add_parser(
        "consolidate",
        help="gather a ZeRO checkpoint into a model folder load_model loads",
        description="Gather RUN/checkpoint-K (DeepSpeed ZeRO, any number of processes) into a model folder.",
    )
    gather.add_argument("checkpoint", help="a Trainer checkpoint folder of a DeepSpeed run (RUN/checkpoint-K)")
    gather.add_argument("--out", required=True, help="folder to write (must not exist, or be empty)")
    gather.add_argument("--start", default=None, help="the start model's folder, if it moved since training")
    gather.set_defaults(func=run_consolidate)
    universal = commands.add_parser(
        "universal",
        help="write a ZeRO checkpoint's universal checkpoint (resumable on any number of processes)",
        description="Write RUN/checkpoint-K/global_stepK_universal/ (DeepSpeed's universal checkpoint) once.",
    )
    universal.add_argument("checkpoint", help="a Trainer checkpoint folder of a DeepSpeed run (RUN/checkpoint-K)")
    universal.set_defaults(func=run_universal)


def run_consolidate(args: argparse.Namespace) -> int:
    """The ``checkpoint consolidate`` handler."""
    from flash_vstream.train.consolidate import consolidate

    out = consolidate(args.checkpoint, args.out, start=args.start)
    print(f"consolidated {args.checkpoint} into {out} (flash-vstream ask --model {out} ...)")
    return 0


def run_universal(args: argparse.Namespace) -> int:
    """The ``checkpoint universal`` handler."""
    from pathlib import Path

    from flash_vstream.train.world_size import convert_to_universal

    if not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"checkpoint folder {args.checkpoint} does not exist")
    out = convert_to_universal(Path(args.checkpoint))
    print(f"universal checkpoint of {args.checkpoint}: {out}")
    return 0
