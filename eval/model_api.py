"""The interface through which the evaluation runner drives any model, and how it loads a checkpoint.

The object returned by ``flash_vstream.load_model(name)`` implements `VideoQAModel` for both model families;
tests drive the runner with a scripted fake. Frames arrive already sampled by the runner (the benchmark/profile
decide which); a model that prefers to decode by itself may use ``video`` instead.

`ModelSpec` is what ``flash-vstream eval run``'s model flags (``--model``, ``--device``, ``--dtype``,
``--config``, ``--option``) describe: a checkpoint plus how to load it. Its `ModelSpec.identity` is recorded in
the run folder, so predictions of one model are never mixed with, or scored as, another's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

    from flash_vstream.distributed import DistInfo

__all__ = ["ModelSpec", "VideoQAModel", "model_identity", "rank_device"]


@runtime_checkable
class VideoQAModel(Protocol):
    """Anything that answers a question about a video.

    >>> class Echo:
    ...     def answer(self, question, *, frames=None, video=None, timestamps=None, assistant_prefix="",
    ...                max_new_tokens=16):
    ...         return "A"
    >>> isinstance(Echo(), VideoQAModel)
    True
    """

    def answer(
        self,
        question: str,
        *,
        frames: np.ndarray | None = None,
        video: str | None = None,
        timestamps: np.ndarray | None = None,
        assistant_prefix: str = "",
        max_new_tokens: int = 16,
    ) -> str:
        """Answer ``question`` about a video, greedily.

        Args:
            question: The full user prompt (instructions, question, options, subtitles).
            frames: ``(T, H, W, 3)`` uint8 RGB frames, in time order.
            video: Path of the video file or frame folder, for models that decode themselves.
            timestamps: ``(T,)`` seconds of each frame from the start of the video.
            assistant_prefix: Text the reply is forced to start with (after the assistant header); not
                included in the returned string.
            max_new_tokens: Generation budget.

        Returns:
            The generated text after ``assistant_prefix``.
        """
        ...


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint and how to load it with ``flash_vstream.load_model`` (what ``eval run``'s flags say).

    >>> spec = ModelSpec("runs/ckpt", dtype="bfloat16", options={"rope_mode": "reference"})
    >>> spec.options
    {'rope_mode': 'reference'}
    """

    name_or_path: str
    """Checkpoint directory or Hugging Face Hub id, as given."""
    device: str | None = None
    """``--device``; ``None``/``"auto"``/``"cuda"`` mean this process's own device (``cuda:{local_rank}``)."""
    dtype: str | None = None
    """``--dtype`` (``bfloat16``, ``float16``, ``float32``, ``auto``); ``None``: bf16 on GPU, fp32 on CPU."""
    family: str | None = None
    """The family a ``--config`` preset is for: it loads the checkpoint even over its ``config.json``'s
    ``flash_vstream_family`` marker; a checkpoint that family cannot load is then an error."""
    options: dict[str, Any] = field(default_factory=dict)
    """Family options after merging the preset with ``--option`` (e.g. ``rope_mode="reference"``)."""

    def resolve(self) -> Path:
        """The local checkpoint folder (a Hub id is taken from the local cache or fetched).

        Raises:
            FileNotFoundError: For a path that does not exist or a Hub id that cannot be fetched.
        """
        from flash_vstream.model.loading import resolve_checkpoint

        return resolve_checkpoint(self.name_or_path)

    def identity(self, device: torch.device) -> dict[str, Any]:
        """What makes predictions this model's: folder, ``config.json`` hash, weights, family, options, dtype.

        The options are checked against the checkpoint's family here, before a run records them, so a typo
        fails at once instead of after ``run_config.json`` is written.

        Args:
            device: The device it will load on (the default dtype depends on it).

        Raises:
            FileNotFoundError: For a missing checkpoint or one without ``config.json``.
            ValueError: For a bad dtype or option, or a preset made for another family.
        """
        from flash_vstream.families import family_for_config
        from flash_vstream.model.loading import read_checkpoint_config, resolve_dtype

        path = self.resolve()
        config = read_checkpoint_config(path)
        # The family ``load`` will use: the preset's, else the config.json marker, else the model_type table.
        try:
            found = family_for_config(config, self.family, where=str(path))
        except ValueError:
            if self.family is None:
                raise
            native = family_for_config(config, where=str(path))
            raise ValueError(
                f"the --config preset is for the {self.family} family but {path} is a {native.name} checkpoint; "
                f"use a preset made for {native.name} models"
            ) from None
        options = found.check_options(self.options, where="--option/--config")
        return {
            "resolved": str(path.resolve()),
            "config_sha256": hashlib.sha256((path / "config.json").read_bytes()).hexdigest(),
            "weights": weights_fingerprint(path),
            "family": found.name,
            "options": dict(sorted(options.items())),
            "dtype": str(resolve_dtype(self.dtype, device, checkpoint=path)).removeprefix("torch."),
        }

    def load(self, device: torch.device) -> VideoQAModel:
        """Load the checkpoint onto ``device`` (errors are ``load_model``'s one-line ones)."""
        from flash_vstream import load_model

        return load_model(self.resolve(), device=device, dtype=self.dtype, family=self.family, **self.options)


def rank_device(flag: str | None, dist: DistInfo) -> torch.device:
    """The device this process evaluates on: ``--device`` if it names one, else the rank's own.

    ``None``, ``"auto"`` and a bare ``"cuda"`` mean the process's device from `init_distributed`
    (``cuda:{local_rank}`` under torchrun), so N ranks use N GPUs instead of all loading onto GPU 0.

    Raises:
        ValueError: For a string that is not a device, or CUDA asked for where there is none.
    """
    from flash_vstream.model.loading import resolve_device

    if flag is None or flag == "auto" or (flag == "cuda" and dist.device.type == "cuda"):
        return dist.device
    return resolve_device(flag)


def weights_fingerprint(path: Path, edge: int = 1 << 20) -> str:
    """A sha256 over each weight file's name, size, first and last ``edge`` bytes (``*.safetensors``, ``*.bin``).

    A model retrained into the same folder keeps its ``config.json``, so the config hash alone would let a run
    folder resume with another model's predictions; hashing whole 7B checkpoints on every run would cost a
    minute. Any retraining changes the first megabyte (the first tensors' values).
    """
    digest = hashlib.sha256()
    for file in sorted([*path.glob("*.safetensors"), *path.glob("*.bin")]):
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(edge))
            if size > edge:
                handle.seek(max(size - edge, edge))
                digest.update(handle.read())
    return digest.hexdigest()


def model_identity(model: Any, device: torch.device) -> dict[str, Any]:
    """`ModelSpec.identity` for a spec; for a ready model object, its class (the caller vouches for the rest)."""
    if isinstance(model, ModelSpec):
        return model.identity(device)
    return {"object": f"{type(model).__module__}.{type(model).__qualname__}"}
