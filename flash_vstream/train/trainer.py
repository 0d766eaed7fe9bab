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
from flash_vstream.train.config import CONFIG_FILE, ConfigError, TrainConfig, config_to_dict, dump_config
from flash_vstream.train.start import FAMILY_TRAINING, StartPoint, build_start
from flash_vstream.train.world_size import join_deepspeed, prepare_resume

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


VISUAL_INPUTS = ("pixel_values", "features", "pixel_values_videos")
"""Batch keys of visual inputs (STAR frames or features, Flash video patches)."""


class FlashVStreamTrainer(Trainer):
    """The ``Trainer`` with a length-grouped sampler and a loss that reaches the visual parts in every batch.

    - Sampler: :class:`SeededLengthGroupedSampler` over ``train_dataset.lengths`` when
      ``training.train_sampling_strategy`` is ``group_by_length`` (every other strategy is the ``Trainer``'s own).
      Groups span one global optimiser step (per-device batch x accumulation x processes), so the samples of one
      step have similar lengths on every rank.
    - Loss: a batch of text-only samples never runs the vision tower, memory or projector, so their trainable
      weights get no gradient on that rank while other ranks' batches give them one, and DDP waits forever;
      length grouping makes such batches common (text-only samples are the short ones). Such a batch's loss gets
      an exact ``+ 0`` that depends on each of those weights, so every rank reduces the same gradients (zeros
      where the batch has no visual input). DDP and ZeRO-1 reduce in a fixed order and give exactly the
      one-process result; ZeRO-2/3 reduce in the order gradients appear, which such a batch changes, so
      :func:`check_zero_data` refuses them for data with text-only samples on more than one process.

    Args:
        visual_prefixes: parameter-name prefixes of the visual parts (``FAMILY_TRAINING[family]``).
        *args, **kwargs: the ``Trainer``'s.
    """

    def __init__(self, *args, visual_prefixes: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.visual_prefixes = tuple(visual_prefixes)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        anchors = [] if any(key in inputs for key in VISUAL_INPUTS) else self._visual_anchors()
        if not anchors:
            return result
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + sum(p.view(-1)[:1].sum() for p in anchors) * 0.0  # (the gradient: zeros of each shape)
        return (loss, outputs) if return_outputs else loss

    def _visual_anchors(self) -> list[torch.Tensor]:
        """The trainable visual parameters (none under ZeRO-3, whose parameters live partitioned)."""
        from transformers.integrations import is_deepspeed_zero3_enabled

        if not self.visual_prefixes or is_deepspeed_zero3_enabled():
            return []
        return [
            p
            for name, p in _base_model(self.model).named_parameters()
            if p.requires_grad and name.startswith(self.visual_prefixes)
        ]

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
    if resume is not None:
        for line in changed_settings(resume / CONFIG_FILE, config):
            print0(f"train: resuming with a changed setting: {line}")
        prepare_resume(resume, args, world_size)  # another process count: DeepSpeed's universal checkpoint
    join_deepspeed(args)  # before from_pretrained partitions a ZeRO-3 model
    if rank == 0:
        dump_config(config, output_dir)
    print0(f"train: {world_size} process(es), run folder {output_dir}" + (f", resuming {resume}" if resume else ""))
    set_seed(args.seed)  # the new parts of a model built from an LLM + a vision tower are initialised with it

    result = None
    try:
        # --- model and data ---------------------------------------------------------------------------------
        start = build_start(config.model)
        dataset = build_dataset(config, start)
        if getattr(dataset, "may_hold_text_only", True):  # StreamingVLM chunks all hold a video: no scan
            check_zero_data(dataset.samples, args, world_size)
        check_zero_model(start, args)
        from flash_vstream.train.collate import collator_for

        trainer = FlashVStreamTrainer(
            model=start.model,
            args=args,
            train_dataset=dataset,
            data_collator=collator_for(_base_model(start.model), start.tokenizer),
            processing_class=start.tokenizer,
            visual_prefixes=FAMILY_TRAINING[start.family].visual_prefixes,
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

    finally:
        # --- cleanup ------------------------------------------------------------------------------------
        # Without it a DeepSpeed/gloo rank can abort at exit ("terminate called without an active exception").
        cleanup_distributed(wait=result is not None)
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


def changed_settings(saved: Path, config: TrainConfig) -> list[str]:
    """``"key: old -> new"`` for every leaf of ``config`` that differs from the resolved config in ``saved``."""
    if not saved.is_file():
        return []
    import yaml

    old, new = _leaves(yaml.safe_load(saved.read_text()) or {}), _leaves(config_to_dict(config))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and key != "resume"
    ]


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_step(checkpoint: Path | None) -> int | None:
    """The global step a checkpoint was saved at (``None`` for no checkpoint)."""
    if checkpoint is None:
        return None
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])


def _base_model(model):
    """The family model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def build_dataset(config: TrainConfig, start: StartPoint):
    """The training dataset of ``config.data`` for the start model.

    A family with a ``FamilyTraining.dataset_builder`` builds its own (StreamingVLM: chunk records); every other
    family gets a ``TrainDataset`` of LLaVA-style rows (media the family cannot read are skipped).

    Raises:
        FileNotFoundError: for a missing data file or media root.
        ValueError: for an invalid mixture, no usable sample, or with ``data.strict`` the first unusable row.
    """
    from flash_vstream.train.dataset import TrainDataset, sample_encoder_for
    from flash_vstream.train.mixture import load_mixture
    from flash_vstream.train.start import resolve_target

    builder = FAMILY_TRAINING[start.family].dataset_builder
    if builder is not None:  # a family whose data are not LLaVA-style rows (StreamingVLM's chunk files)
        dataset = resolve_target(builder)(config, start)
        print0(f"train: data {config.data.data}: {len(dataset)} sample(s) ({start.family} family)")
        return dataset
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


def zero_stage(args) -> int:
    """The DeepSpeed ZeRO stage of ``args`` (0 without DeepSpeed)."""
    ds = getattr(args, "hf_deepspeed_config", None)
    if ds is None:
        return 0
    return int(ds.config.get("zero_optimization", {}).get("stage", 0))


def check_zero_data(samples, args, world_size: int) -> None:
    """Refuse ZeRO-2/3 on several processes for data holding text-only samples (see :class:`FlashVStreamTrainer`).

    Raises:
        ConfigError: naming the DeepSpeed config, the first text-only row and the ways out.
    """
    stage = zero_stage(args)
    if world_size < 2 or stage < 2:
        return
    text_only = [s for s in samples if not s.media]
    if text_only:
        raise ConfigError(
            f"training.deepspeed {args.deepspeed} runs ZeRO-{stage} on {world_size} processes, and {len(text_only)} "
            f"of the {len(samples)} samples are text-only (e.g. {text_only[0].where}): a text-only batch changes the "
            "order in which ZeRO-2/3 reduce gradients, and the ranks' reductions then disagree. Use "
            "configs/deepspeed/zero1.json or no DeepSpeed (both exact with such data), or drop the text-only rows"
        )


def check_zero_model(start: StartPoint, args) -> None:
    """Refuse ZeRO-3 for a STAR model whose memory trains.

    ZeRO-3 gathers a module's weights only around its ``forward``; the STAR memory's attention is driven through
    its own methods (and its exact-zero term reads the weights directly), so it would see empty shards.

    Raises:
        ConfigError: naming the flag and the ways out.
    """
    if zero_stage(args) < 3 or start.family != "star":
        return
    memory = _base_model(start.model).memory
    if any(p.requires_grad for p in memory.parameters()):
        raise ConfigError(
            f"training.deepspeed {args.deepspeed} runs ZeRO-3, which cannot shard the STAR memory's attention "
            "(it runs outside forward); use configs/deepspeed/zero2.json or zero1.json, or set "
            "model.memory_trainable=false"
        )


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
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # Training is over: a live ZeRO-3 config would make from_pretrained partition the rebuilt base model.
    unset_hf_deepspeed_config()
    set_seed(config.training.seed)
    base = build_start(config.model, with_lora=False)
    merged = PeftModel.from_pretrained(base.model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    dump_config(config, out)
