r"""``flash-vstream train --config FILE [KEY=VALUE ...]``: one training run from a YAML config plus overrides.

One process, ``torchrun`` and the ``deepspeed`` launcher run the same command::

    flash-vstream train --config configs/train/star_debug.yaml
    torchrun --nproc_per_node 8 -m flash_vstream.cli train --config configs/train/star_stage2.yaml \
        training.deepspeed=configs/deepspeed/zero2.json
    deepspeed --num_gpus 8 --module flash_vstream.cli train --config configs/train/star_stage2.yaml \
        training.deepspeed=configs/deepspeed/zero2.json

Overrides are dotted keys of the config tree with YAML values (``training.learning_rate=1e-4``,
``model.lora.r=8``); ``--print-config`` shows the resolved tree and exits. The module imports only the standard
library at the top, so ``flash-vstream --help`` stays instant; the training stack is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_train_command", "main", "run_train"]


def add_train_command(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to the ``flash-vstream`` sub-commands; returns its parser."""
    train = subparsers.add_parser(
        "train",
        help="train a model from a YAML config (HF Trainer; torchrun and deepspeed launchers work)",
        description="Train a STAR or Flash model as a YAML config says (configs/train/), with KEY=VALUE overrides.",
    )
    add_train_arguments(train)
    return train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``train`` (shared by the sub-command and ``python -m flash_vstream.train.train_cli``)."""
    parser.add_argument("--config", required=True, help="training config YAML (e.g. configs/train/star_stage1.yaml)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides with YAML values, e.g. training.max_steps=10 model.lora.r=8 data.strict=true",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # The deepspeed launcher appends --local_rank=N; the rank is read from LOCAL_RANK like under torchrun.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Run the ``train`` command; 0 on success."""
    from flash_vstream.train.config import load_train_config

    config = load_train_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        from flash_vstream.train.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0
    from flash_vstream.train.trainer import run_training

    result = run_training(config)
    from flash_vstream.distributed import print0

    where = result.model_dir if result.model_dir is not None else result.adapter_dir
    print0(f"trained {result.family} model for {result.global_step} steps: {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m flash_vstream.train.train_cli --config FILE [KEY=VALUE ...]`` (= ``flash-vstream train``)."""
    parser = argparse.ArgumentParser(prog="flash-vstream train", description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"flash-vstream train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
