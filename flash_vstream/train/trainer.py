"""A training run on transformers' ``Trainer``: setup -> model -> data -> train (resume) -> save -> cleanup.

The ``Trainer`` (and through it accelerate and DeepSpeed) runs the loop, gradient accumulation, mixed precision,
checkpointing and resume; PEFT adds LoRA. This module adds only what the project needs:

- :class:`FlashVStreamTrainer`: the ``Trainer`` with a length-grouped sampler fed from ``dataset.lengths`` (token
  counts estimated from metadata, so no medium is decoded to group them) and seeded per epoch, so the data order
  is the same on every rank, on every run and after a resume;
- :func:`run_training`: builds everything from a :class:`~flash_vstream.train.config.TrainConfig` and writes the
  run folder::

      OUTPUT_DIR/
        train_config.yaml      the resolved config (also inside every checkpoint-N/ and the adapter/ folder)
        metrics.jsonl          one line per log step (rank 0)
        checkpoint-N/          Trainer checkpoints: weights, optimizer, scheduler, RNG and data position
        config.json, model.safetensors, tokenizer files   the trained model (full fine-tuning, or LoRA merged)
        adapter/               LoRA runs: the PEFT adapter (adapter_config.json, adapter_model.safetensors)

``flash_vstream.load_model(OUTPUT_DIR)`` and ``flash-vstream ask --model OUTPUT_DIR`` load the trained model.

The same code runs as one process, under ``torchrun --nproc_per_node N`` and under the ``deepspeed`` launcher
(``training.deepspeed: configs/deepspeed/zero2.json``): :func:`~flash_vstream.distributed.init_distributed` joins the
process group the launcher describes, and the ``Trainer`` takes it from there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import get_last_checkpoint

from flash_vstream.distributed import cleanup_distributed, init_distributed, print0
from flash_vstream.train.callbacks import ConfigIntoCheckpoints, MetricsJsonl
from flash_vstream.train.config import ConfigError, TrainConfig, dump_config
from flash_vstream.train.start import FAMILY_TRAINING, StartPoint, build_start

__all__ = ["ADAPTER_DIR", "FlashVStreamTrainer", "RunResult", "SeededLengthGroupedSampler", "run_training"]

ADAPTER_DIR = "adapter"
"""Sub-folder of the run folder holding a LoRA run's adapter."""


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' ``LengthGroupedSampler`` with its own generator, seeded with ``seed + epoch``.

    The parent draws from the global RNG, which differs between ranks and between a run and its resume; here the
    order depends only on the seed and the epoch (the Trainer calls :meth:`set_epoch`).
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=list(lengths))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class FlashVStreamTrainer(Trainer):
    """The ``Trainer`` with :class:`SeededLengthGroupedSampler` over ``train_dataset.lengths``.

    Used when ``training.train_sampling_strategy`` is ``group_by_length``; every other strategy is the
    ``Trainer``'s own. Groups span one global optimiser step (per-device batch x accumulation x processes), so
    the samples of one step have similar lengths on every rank.
    """

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if not _groups_by_length(self.args) or lengths is None:
            return super()._get_train_sampler(train_dataset)
        args = self.args
        group = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        seed = args.data_seed if args.data_seed is not None else args.seed
        return SeededLengthGroupedSampler(group, lengths, seed)


def _groups_by_length(args) -> bool:
    # transformers 5.24 names it train_sampling_strategy; earlier versions had a group_by_length flag.
    return getattr(args, "train_sampling_strategy", None) == "group_by_length" or bool(
        getattr(args, "group_by_length", False)
    )


@dataclass
class RunResult:
    """What a finished run left behind."""

    output_dir: Path
    """The run folder (holds the trained model unless LoRA without ``merge``)."""
    model_dir: Path | None
    """The folder ``load_model`` loads: the run folder, or ``None`` for a LoRA run without ``merge``."""
    adapter_dir: Path | None
    """The LoRA adapter folder (LoRA runs only)."""
    global_step: int
    """Optimiser steps done (including those before a resume)."""
    train_loss: float
    """The Trainer's average training loss of this invocation."""
    family: str
    """The model family's registry name."""


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


def run_training(config: TrainConfig, callbacks: list | tuple = ()) -> RunResult:
    """Train as ``config`` says and save the result; see the module docstring for the run folder.

    Args:
        config: the resolved config.
        callbacks: extra ``TrainerCallback`` objects (e.g. a test's interruption).

    Raises:
        ConfigError: for settings that contradict each other or the start point.
        FileNotFoundError, ValueError: for missing or unusable data and checkpoints.
    """
    # --- setup ------------------------------------------------------------------------------------------
    rank, _, world_size, _ = init_distributed()
    args = config.training
    output_dir = Path(args.output_dir)
    resume = resolve_resume(config.resume, output_dir)
    if rank == 0:
        dump_config(config, output_dir)
    print0(f"train: {world_size} process(es), run folder {output_dir}" + (f", resuming {resume}" if resume else ""))
    set_seed(args.seed)  # the new parts of a model built from an LLM + a vision tower are initialised with it

    # --- model and data ---------------------------------------------------------------------------------
    start = build_start(config.model)
    dataset = build_dataset(config, start)
    from flash_vstream.train.collate import collator_for

    trainer = FlashVStreamTrainer(
        model=start.model,
        args=args,
        train_dataset=dataset,
        data_collator=collator_for(_base_model(start.model), start.tokenizer),
        processing_class=start.tokenizer,
        callbacks=[MetricsJsonl(output_dir, resume_step(resume)), ConfigIntoCheckpoints(config), *callbacks],
    )

    # --- train ------------------------------------------------------------------------------------------
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    # --- save -------------------------------------------------------------------------------------------
    model_dir, adapter_dir = save_outputs(trainer, config, start)
    print0(f"train: done at step {trainer.state.global_step}; model in {model_dir or adapter_dir}")
    result = RunResult(
        output_dir, model_dir, adapter_dir, trainer.state.global_step, output.training_loss, start.family
    )

    # --- cleanup ----------------------------------------------------------------------------------------
    # Without it a DeepSpeed/gloo rank can abort at exit ("terminate called without an active exception").
    cleanup_distributed()
    return result


def resolve_resume(resume: str, output_dir: Path) -> Path | None:
    """The checkpoint to resume from under the ``resume`` policy (see :attr:`TrainConfig.resume`).

    Raises:
        ConfigError: for ``never`` with checkpoints already in ``output_dir``, or a folder that is no checkpoint.
    """
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if resume == "auto":
        return Path(last) if last else None
    if resume == "never":
        if last:
            raise ConfigError(
                f"training.output_dir {output_dir} already holds {Path(last).name}; set resume=auto to continue "
                "that run, or choose a new training.output_dir"
            )
        return None
    folder = Path(resume)
    if not (folder / "trainer_state.json").is_file():
        raise ConfigError(f"resume={resume} is not a Trainer checkpoint folder (no trainer_state.json in it)")
    return folder


def resume_step(checkpoint: Path | None) -> int | None:
    """The global step a checkpoint was saved at (``None`` for no checkpoint)."""
    if checkpoint is None:
        return None
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])


def _base_model(model):
    """The family model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def build_dataset(config: TrainConfig, start: StartPoint):
    """The ``TrainDataset`` of ``config.data`` for the start model (media the family cannot read are skipped).

    Raises:
        FileNotFoundError: for a missing data file or media root.
        ValueError: for an invalid mixture, no usable sample, or with ``data.strict`` the first unusable row.
    """
    from flash_vstream.train.dataset import TrainDataset, sample_encoder_for
    from flash_vstream.train.mixture import load_mixture

    data = config.data
    max_length = data.max_length or FAMILY_TRAINING[start.family].max_length
    encoder = sample_encoder_for(_base_model(start.model), start.tokenizer, max_length=max_length)
    loaded = load_mixture(
        data.data, root=data.media_root, strict=data.strict, media_check=encoder.length_budget.check_media
    )
    for source in loaded.sources:
        skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(source.data.skipped.items()))
        print0(
            f"train: data {source.spec.label}: {len(source.selected)} sample(s) of {source.data.rows} row(s)"
            + (f"; skipped {skipped} (flash-vstream data check lists them)" if skipped else "")
        )
    samples = loaded.samples
    if not samples:
        raise ValueError(f"data.data {data.data} holds no usable sample; run `flash-vstream data check` on it")
    return TrainDataset(samples, encoder)


def save_outputs(trainer: Trainer, config: TrainConfig, start: StartPoint) -> tuple[Path | None, Path | None]:
    """Write the trained model (or the LoRA adapter, and with ``merge`` the merged model) and the config.

    Returns:
        ``(model_dir, adapter_dir)``: the folder ``load_model`` loads (``None`` for LoRA without merge) and the
        adapter folder (``None`` without LoRA).
    """
    output_dir = Path(trainer.args.output_dir)
    lora = config.model.lora
    if not lora.enabled:
        trainer.save_model(str(output_dir))  # every rank calls it: ZeRO-3 gathers the weights
        if trainer.is_world_process_zero():
            dump_config(config, output_dir)
        return output_dir, None
    adapter_dir = output_dir / ADAPTER_DIR
    trainer.save_model(str(adapter_dir))
    if trainer.is_world_process_zero():
        dump_config(config, adapter_dir)
        if lora.merge:
            merge_adapter(config, adapter_dir, output_dir, start.tokenizer)
    trainer.accelerator.wait_for_everyone()
    return (output_dir if lora.merge else None), adapter_dir


def merge_adapter(config: TrainConfig, adapter_dir: Path, out: Path, tokenizer) -> None:
    """Rebuild the base model, apply the saved adapter, merge it and save a full checkpoint into ``out``.

    Rebuilding from the saved adapter (not merging the in-memory model) works under every DeepSpeed stage; the
    seed is set first, so the parts a model built from an LLM + a vision tower initialises come out the same.
    """
    from peft import PeftModel

    set_seed(config.training.seed)
    base = build_start(config.model, with_lora=False)
    merged = PeftModel.from_pretrained(base.model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    dump_config(config, out)
