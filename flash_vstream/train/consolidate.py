"""Gathering a DeepSpeed ZeRO checkpoint into a model folder ``load_model`` loads, without DeepSpeed's engine.

A ZeRO checkpoint (``RUN/checkpoint-K/global_stepK/``) holds the fp32 weights of the *trained* parameters split over
the processes that saved it; the frozen ones (the CLIP tower, a LoRA run's base model) are not in it. DeepSpeed's
``get_fp32_state_dict_from_zero_checkpoint`` gathers the trained ones whole, on any machine; :func:`consolidate`
rebuilds the run's start model from the checkpoint's own ``train_config.yaml`` (the frozen parameters never change,
so they are the start model's), loads the gathered weights into it strictly (every trained parameter present,
nothing unknown) and writes the folder a finished run writes::

    OUT/
      config.json, model.safetensors, tokenizer files, train_config.yaml   the model (LoRA: adapters merged)
      adapter/                                                            LoRA runs: the PEFT adapter

``flash_vstream.load_model(OUT)`` and ``flash-vstream ask --model OUT`` load it. The start model's folder (``model.
start``, or ``model.llm`` + ``model.vision_tower``) must be where the config says, or be given with ``start=``.
"""

from __future__ import annotations

from pathlib import Path

from flash_vstream.model.checkpoints import key_mismatch_message
from flash_vstream.train.config import CONFIG_FILE, dump_config, load_train_config
from flash_vstream.train.world_size import read_zero_checkpoint

__all__ = ["consolidate", "gathered_state_dict", "load_trained"]


def gathered_state_dict(checkpoint: Path) -> dict:
    """The fp32 weights of every trained parameter of a ZeRO checkpoint, gathered whole (names as in training).

    Raises:
        FileNotFoundError: for a folder that is no Trainer checkpoint of a DeepSpeed run.
        ValueError: for an incomplete checkpoint, or DeepSpeed not installed.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint} does not exist")
    saved = read_zero_checkpoint(checkpoint)
    if saved is None:
        raise FileNotFoundError(
            f"{checkpoint} holds no DeepSpeed ZeRO checkpoint (no 'latest' file): a run without DeepSpeed saves "
            "its weights in the checkpoint folder itself; point at a checkpoint-K/ of a run with training.deepspeed"
        )
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as err:
        raise ValueError(f"consolidating needs DeepSpeed ({err}); install it with `DS_BUILD_OPS=0 pip install "
                         "deepspeed`") from err
    return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=saved.tag))


def consolidate(checkpoint: Path, out: Path, *, start: str | None = None) -> Path:
    """Write ``checkpoint``'s trained model into ``out`` (see the module docstring); returns ``out``.

    Args:
        checkpoint: a Trainer checkpoint folder of a DeepSpeed run (``RUN/checkpoint-K``).
        out: the folder to write; it must not exist or be empty.
        start: the start model's folder, when it is no longer where the checkpoint's config says.

    Raises:
        FileNotFoundError: for a missing checkpoint, config or start folder.
        FileExistsError: for a non-empty ``out``.
        ValueError: for gathered weights that do not match the model (missing or unknown names, wrong shapes).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint} does not exist")
    config_file = checkpoint / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{checkpoint} has no {CONFIG_FILE}; consolidate a checkpoint of `flash-vstream train`")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; choose a new one")
    state = gathered_state_dict(checkpoint)

    # No DeepSpeed config: a live ZeRO-3 one would make from_pretrained partition the rebuilt model.
    overrides = ["training.deepspeed=null", *([f"model.start={start}"] if start is not None else [])]
    config = load_train_config(config_file, overrides)
    from transformers import set_seed

    from flash_vstream.train.start import build_start
    from flash_vstream.train.trainer import ADAPTER_DIR

    set_seed(config.training.seed)  # the parts a model built from an LLM + a vision tower initialises, as trained
    built = build_start(config.model)
    load_trained(built.model, state, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    model = built.model
    if config.model.lora.enabled:
        model.save_pretrained(str(out / ADAPTER_DIR))
        dump_config(config, out / ADAPTER_DIR)
        model = model.merge_and_unload()
    model.save_pretrained(str(out))
    built.tokenizer.save_pretrained(str(out))
    dump_config(config, out)
    return out


def load_trained(model, state: dict, checkpoint: Path) -> None:
    """Load gathered weights into ``model``: exactly its trained parameters (frozen ones may come too).

    Raises:
        ValueError: naming the trained parameters missing from ``state``, its names the model lacks, or a wrong
            shape.
    """
    known = set(model.state_dict())
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(trained - set(state)), sorted(set(state) - known)
    if missing or unexpected:
        raise ValueError(key_mismatch_message(
            f"the ZeRO checkpoint {checkpoint} does not match the model its {CONFIG_FILE} builds:",
            {"trained parameters missing": missing, "unknown names": unexpected},
            "Consolidate with the start model and LoRA settings the run trained with."))
    try:
        model.load_state_dict(state, strict=False)  # frozen parameters stay the start model's
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"the ZeRO checkpoint {checkpoint} has tensors of the wrong shape for the model: {err}") \
            from err
