"""Turning what a user typed (``--model``, ``--device``, ``--dtype``) into a checkpoint folder, a device and a dtype.

Each function fails with one ``ValueError``/``FileNotFoundError`` whose message names the bad value and the fix, so
the command line can print it as one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; otherwise the named device, checked to exist.

    Raises:
        ValueError: for a string that is not a device (``"gpu"``), or CUDA asked for where there is none.
    """
    if device is None or device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device} needs a CUDA GPU, but torch sees none (torch {torch.__version__}); "
                "use --device cpu, or install a CUDA build of PyTorch on a GPU machine"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), numbered 0..{count - 1}")
    elif resolved.type not in ("cpu", "meta"):
        raise ValueError(f"--device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, checkpoint: Path | None = None) -> torch.dtype:
    """Weights dtype: ``None`` -> bf16 on CUDA, fp32 elsewhere; ``"auto"`` -> the checkpoint's saved dtype.

    Raises:
        ValueError: for an unknown dtype name, listing the accepted ones.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == "auto":
        saved = {}
        if checkpoint is not None and (checkpoint / "config.json").is_file():
            saved = json.loads((checkpoint / "config.json").read_text())
        dtype = saved.get("dtype") or saved.get("torch_dtype") or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not supported; use bfloat16, float16, float32 or auto")
    return DTYPES[dtype]


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local directory as is; otherwise a Hub id, taken from the local Hugging Face cache or downloaded.

    Raises:
        FileNotFoundError: for a path that does not exist, a file, or a Hub id that cannot be fetched (offline,
            no such repository), saying how to download it and where to point ``--model``.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"--model {str(name_or_path)!r} is a file; pass the checkpoint directory")
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"checkpoint directory {name!r} does not exist (and it is not a Hub id like 'org/name')"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name))
    except (OSError, ValueError) as err:  # offline mode, no network, unknown repository, gated repository
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FileNotFoundError(
            f"cannot get {name!r} from the Hugging Face Hub ({reason}); on a machine with network run "
            f"`huggingface-cli download {name} --local-dir DIR` and pass --model DIR"
        ) from None


def read_checkpoint_config(path: Path) -> dict:
    """A checkpoint's ``config.json`` as a dict, checked to name its ``model_type``.

    Raises:
        FileNotFoundError: without a ``config.json``.
        ValueError: for invalid JSON or a missing ``model_type``.
    """
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a checkpoint directory?")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the checkpoint is corrupt") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{config_file} has no 'model_type' field, so its model family is unknown")
    return config


def read_model_type(path: Path) -> str:
    """The ``model_type`` of a checkpoint's ``config.json`` (errors as :func:`read_checkpoint_config`)."""
    return read_checkpoint_config(path)["model_type"]
