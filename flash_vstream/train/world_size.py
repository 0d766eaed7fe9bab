"""Resuming a DeepSpeed ZeRO-3 checkpoint on another number of processes, through DeepSpeed's universal checkpoint.

A ZeRO checkpoint (``RUN/checkpoint-K/global_stepK/``) holds the fp32 weights and the optimizer state split into
one file per process, and DeepSpeed loads it only on the number of processes that wrote it. Its universal checkpoint
holds every trained parameter whole (``zero/<name>/fp32.pt``, ``exp_avg.pt``, ``exp_avg_sq.pt``) and loads on any
number. :func:`prepare_resume` (called by :func:`~flash_vstream.train.trainer.run_training` before the ``Trainer``
is built) compares the checkpoint's process count with the current one; when they differ it converts the checkpoint
once (rank 0, with DeepSpeed's ``ds_to_universal``) into a sibling folder of the ZeRO one and turns on DeepSpeed's
``checkpoint.load_universal``, so the ``Trainer``'s own resume loads it::

    RUN/checkpoint-K/
      global_stepK/              the ZeRO checkpoint as saved (never changed)
      latest                     "global_stepK"
      global_stepK_universal/    written on the first resume at another process count, reused after
      latest_universal           "global_stepK_universal" (written last: its presence marks a finished conversion)

ZeRO-1/2 checkpoints are refused on another count: converted the same way, they resumed with wrong weights (the
losses jumped), without any error. The rest of the checkpoint (scheduler, trainer state, data position) does not
depend on the process count. Each process draws its own random numbers, so dropout does not continue the same
stream on another count (the per-rank RNG files are not used); without dropout the losses continue exactly.

:func:`join_deepspeed` lets DeepSpeed see the process group before a ZeRO-3 model is built (``from_pretrained``
partitions it at load time, and on CPUs nothing else has told DeepSpeed how many processes there are yet).
"""

from __future__ import annotations

import re
import shutil
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from flash_vstream.distributed import print0
from flash_vstream.train.config import ConfigError

__all__ = [
    "ZeroCheckpoint",
    "convert_to_universal",
    "join_deepspeed",
    "prepare_resume",
    "read_zero_checkpoint",
]

LATEST_UNIVERSAL = "latest_universal"
"""The file DeepSpeed reads the universal checkpoint's folder name from (``load_universal`` on)."""
UNIVERSAL_SUFFIX = "_universal"
"""Suffix of the universal checkpoint's folder, beside the ZeRO one."""
_OPTIM_FILE = re.compile(r"(?:^|_)zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_ZERO3_MODEL_FILE = re.compile(r"^zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt$")


@dataclass(frozen=True)
class ZeroCheckpoint:
    """What a ZeRO checkpoint folder says about how it was saved."""

    folder: Path
    """The Trainer checkpoint (``RUN/checkpoint-K``)."""
    tag: str
    """The ZeRO sub-folder's name (``global_stepK``, from ``latest``)."""
    world_size: int
    """Processes that saved it (one optimizer file per data-parallel rank)."""
    stage: int
    """3 when every rank wrote its own model-states file (ZeRO-3), else 2 (ZeRO-1 or 2)."""


def read_zero_checkpoint(checkpoint: Path) -> ZeroCheckpoint | None:
    """The ZeRO checkpoint inside a Trainer checkpoint folder, or ``None`` when it holds none (no DeepSpeed).

    Only file names are read (no pickle is opened).

    Raises:
        ValueError: for a ``latest`` file naming a missing folder, or a folder without optimizer files.
    """
    checkpoint = Path(checkpoint)
    latest = checkpoint / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    zero_dir = checkpoint / tag
    if not zero_dir.is_dir():
        raise ValueError(f"{latest} names {tag!r}, but {zero_dir} does not exist; the checkpoint is incomplete")
    ranks = {}
    for path in zero_dir.iterdir():
        match = _OPTIM_FILE.search(path.name)
        if match:
            ranks.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if not ranks:
        raise ValueError(f"{zero_dir} holds no ZeRO optimizer files (*_optim_states.pt); the checkpoint is incomplete")
    world_size = sum(len(dp) for dp in ranks.values())
    stage = 3 if any(_ZERO3_MODEL_FILE.match(p.name) for p in zero_dir.iterdir()) else 2
    return ZeroCheckpoint(folder=checkpoint, tag=tag, world_size=world_size, stage=stage)


def _zero_stage(args) -> int:
    ds = getattr(args, "hf_deepspeed_config", None)
    return 0 if ds is None else int(ds.config.get("zero_optimization", {}).get("stage", 0))


def prepare_resume(checkpoint: Path, args, world_size: int) -> bool:
    """Make ``checkpoint`` loadable by this run; ``True`` when it resumes from a universal checkpoint.

    Same process count: nothing to do. Another count: the universal checkpoint is made (once, by rank 0; the others
    wait) and ``args``' DeepSpeed config gets ``checkpoint.load_universal: true``. Call it on every rank, after
    :func:`~flash_vstream.distributed.init_distributed` and before the ``Trainer`` is built.

    Args:
        checkpoint: the Trainer checkpoint folder the run resumes from.
        args: the run's ``TrainingArguments``.
        world_size: processes of this run.

    Raises:
        ConfigError: for a checkpoint this run cannot load (DeepSpeed on one side only, another ZeRO stage, a
            ZeRO-1/2 checkpoint of another process count), naming the fix.
    """
    saved = read_zero_checkpoint(checkpoint)
    stage = _zero_stage(args)
    if saved is None:
        if stage:
            raise ConfigError(
                f"resume checkpoint {checkpoint} was saved without DeepSpeed (no 'latest' file, no global_step*/), but "
                f"training.deepspeed {args.deepspeed} runs ZeRO-{stage}: set training.deepspeed=null to resume it"
            )
        return False
    if not stage:
        raise ConfigError(
            f"resume checkpoint {checkpoint} is a DeepSpeed ZeRO checkpoint saved by {saved.world_size} process(es) "
            f"(its optimizer state is in {saved.tag}/, which only DeepSpeed reads), but training.deepspeed is not set: "
            f"set training.deepspeed to the run's config (e.g. configs/deepspeed/zero{saved.stage}.json; any number "
            "of processes), or `flash-vstream checkpoint consolidate` it for the weights alone"
        )
    if (saved.stage == 3) != (stage == 3):
        raise ConfigError(
            f"resume checkpoint {checkpoint} was saved with ZeRO-{'3' if saved.stage == 3 else '1/2'}, but training."
            f"deepspeed {args.deepspeed} runs ZeRO-{stage}: resume with the stage it was saved with "
            f"(e.g. configs/deepspeed/{'zero3.json' if saved.stage == 3 else 'zero2.json'})"
        )
    if saved.world_size == world_size:
        return False
    if saved.stage != 3:
        # Tried: a ZeRO-2 checkpoint's param_slice_mappings name the flat buffer's slices in another order than
        # they are stored, so ds_to_universal writes wrong weights and the resumed losses jump, silently.
        raise ConfigError(
            f"resume checkpoint {checkpoint} is a ZeRO-1/2 checkpoint saved by {saved.world_size} process(es), and "
            f"this run has {world_size}: only ZeRO-3 checkpoints resume on another process count. Resume on "
            f"{saved.world_size} process(es), or start a new run from `flash-vstream checkpoint consolidate` "
            "(weights only; the optimizer state starts afresh)"
        )
    print0(
        f"train: {checkpoint} was saved by {saved.world_size} process(es), this run has {world_size}: "
        "resuming from its universal checkpoint"
    )
    _on_rank0_then_wait(lambda: convert_to_universal(checkpoint))
    args.hf_deepspeed_config.config.setdefault("checkpoint", {})["load_universal"] = True
    return True


def convert_to_universal(checkpoint: Path) -> Path:
    """Write a ZeRO-3 ``checkpoint``'s universal checkpoint beside its ZeRO one (once); returns its folder.

    A finished conversion (``latest_universal`` present and naming an existing folder) is reused; a folder left by
    an interrupted one is removed and written again. Nothing of the ZeRO checkpoint is changed.

    Raises:
        ValueError: for a folder holding no ZeRO-3 checkpoint.
    """
    saved = read_zero_checkpoint(checkpoint)
    if saved is None:
        raise ValueError(f"{checkpoint} holds no DeepSpeed ZeRO checkpoint (no 'latest' file); nothing to convert")
    if saved.stage != 3:
        raise ValueError(
            f"{checkpoint} is a ZeRO-1/2 checkpoint; only ZeRO-3 checkpoints are converted (ZeRO-2 ones resumed from "
            "their universal checkpoint with wrong weights). Resume it on the process count that saved it"
        )
    out = saved.folder / f"{saved.tag}{UNIVERSAL_SUFFIX}"
    marker = saved.folder / LATEST_UNIVERSAL
    if marker.is_file() and (saved.folder / marker.read_text().strip() / "zero").is_dir():
        return saved.folder / marker.read_text().strip()
    if out.exists():  # an interrupted conversion (the marker is written last)
        shutil.rmtree(out)
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    # One worker each: a process pool forked inside a training process (threads, a process group) is unsafe.
    ds_to_universal(
        Namespace(
            input_folder=str(saved.folder / saved.tag), output_folder=str(out), num_extract_workers=1,
            num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True,
        )
    )
    if not marker.is_file():
        raise ValueError(f"DeepSpeed's ds_to_universal did not finish converting {saved.folder / saved.tag}")
    return out


def _on_rank0_then_wait(work) -> None:
    """Run ``work`` on rank 0 while the other ranks wait (also when it fails, so no rank hangs)."""
    import torch.distributed as dist

    grouped = dist.is_available() and dist.is_initialized()
    error = None
    if not grouped or dist.get_rank() == 0:
        try:
            work()
        except Exception as err:  # re-raised below, after every rank knows
            error = err
    if grouped:
        status = [error is None]
        dist.broadcast_object_list(status, src=0)
        if not status[0] and error is None:
            raise ValueError("rank 0 failed to prepare the universal checkpoint (its log says why)")
    if error is not None:
        raise error


def join_deepspeed(args) -> None:
    """Hand the joined process group to DeepSpeed's communication layer, for runs with a DeepSpeed config.

    ``from_pretrained`` partitions a ZeRO-3 model at load time and sizes its batch checks by DeepSpeed's own world
    size; on CPUs (``use_cpu``) accelerate does not initialise DeepSpeed's layer until the engine starts, so
    without this it sees one process and refuses the batch sizes of several.
    """
    if getattr(args, "hf_deepspeed_config", None) is None:
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    from deepspeed import comm

    if not comm.is_initialized():
        comm.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
