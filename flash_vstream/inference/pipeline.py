"""``FlashVStream``: the user-facing object that answers questions about a video, and ``load_model``.

One class serves both model families. What differs between them (how frames become model inputs, which prompt
template is used) lives in a family's *input builder*, a callable with the signature::

    builder(question, *, frames=None, features=None, assistant_prefix="") -> dict   # kwargs for model.generate

``frames`` is a uint8 array ``(T, H, W, 3)``; ``features`` are pre-extracted vision features (STAR only). The
returned dict goes to ``model.generate`` unchanged.

>>> vs = load_model("IVGSZ/Flash-VStream-7b")                       # doctest: +SKIP
>>> vs.answer("What is the person doing?", video="assets/sample.mp4")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flash_vstream.video import FrameSampler, read_video


@dataclass
class Answer:
    """An answer with the facts a user may want to log.

    Attributes:
        text: the generated text (the assistant prefix, if any, is not repeated).
        num_frames: frames the memory saw.
        num_visual_tokens: visual tokens spliced into the prompt.
        prompt_tokens: total prompt length in tokens (text + visual).
    """

    text: str
    num_frames: int
    num_visual_tokens: int
    prompt_tokens: int


class FlashVStream:
    """A loaded model plus everything needed to answer questions about videos.

    Args:
        model: a family model (``FlashVStreamForCausalLM`` or the Flash-Memory Qwen2-VL model).
        tokenizer: its tokenizer.
        input_builder: the family's input builder (see the module docstring).
        sampler: how frames are picked from a video file when the caller passes ``video=``.
        visual_token_counter: ``inputs -> int``, how many visual tokens a built input holds (for reporting).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        input_builder: Callable[..., dict[str, Any]],
        sampler: FrameSampler,
        visual_token_counter: Callable[[dict[str, Any]], int],
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.input_builder = input_builder
        self.sampler = sampler
        self.visual_token_counter = visual_token_counter

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def answer(self, question: str, **kwargs) -> str:
        """Answer ``question``; the keyword arguments are those of :meth:`answer_with_details`.

        Returns:
            The generated text.
        """
        return self.answer_with_details(question, **kwargs).text

    def answer_with_details(
        self,
        question: str,
        *,
        frames: np.ndarray | None = None,
        video: str | Path | None = None,
        features: torch.Tensor | None = None,
        timestamps: np.ndarray | None = None,
        assistant_prefix: str = "",
        max_new_tokens: int = 16,
        **generation,
    ) -> Answer:
        """Answer ``question`` about a video given as a file, decoded frames or pre-extracted features.

        Args:
            question: the user's question.
            frames: uint8 ``(T, H, W, 3)`` RGB frames (already sampled), or one ``(H, W, 3)`` image.
            video: a video file, frame directory or image; frames are sampled with ``self.sampler``.
            features: pre-extracted vision features (families that accept them).
            timestamps: seconds of each frame (informational; the memory orders frames by index).
            assistant_prefix: text the assistant's reply starts with (e.g. ``"Best option: ("``).
            max_new_tokens: generation budget.
            **generation: further ``generate`` arguments (greedy decoding by default).

        Returns:
            An :class:`Answer`: the text plus frame and token counts.
        """
        given = sum(x is not None for x in (frames, video, features))
        if given != 1:
            raise ValueError("pass exactly one of frames=, video= or features= to answer()")
        if video is not None:
            frames = read_video(video, sampler=self.sampler).frames
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[None]  # one (H, W, 3) image is a 1-frame video
        inputs = self.input_builder(question, frames=frames, features=features, assistant_prefix=assistant_prefix)
        inputs = {key: _to_device(value, self.device) for key, value in inputs.items()}
        generation.setdefault("do_sample", False)
        generation.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **generation)
        new_tokens = _strip_prompt(output, inputs.get("input_ids"))
        text = self.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()
        num_frames = len(frames) if frames is not None else len(features)
        prompt_len = int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else 0
        return Answer(text, num_frames, self.visual_token_counter(inputs), prompt_len)


def _to_device(value, device: torch.device):
    """Move a tensor, or the tensors of a list (per-sample visual inputs), to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    return value


def _strip_prompt(output: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
    """Drop the echoed prompt: decoder-only ``generate`` returns prompt + new tokens, embeds-only returns new ones."""
    if input_ids is None or output.shape[1] < input_ids.shape[1]:
        return output
    prompt_len = input_ids.shape[1]
    if torch.equal(output[:, :prompt_len].cpu(), input_ids.cpu()):
        return output[:, prompt_len:]
    return output


def load_model(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    **options,
) -> FlashVStream:
    """Load a checkpoint (a local directory or a Hugging Face Hub id) into a ready :class:`FlashVStream`.

    Dispatches on the checkpoint's own ``model_type`` (see :mod:`flash_vstream.model.registry`).

    Args:
        name_or_path: local checkpoint directory or Hub id such as ``"IVGSZ/Flash-VStream-7b"``.
        device: where to put the model (default: CUDA when available, else CPU).
        dtype: weights dtype (default: bf16 on CUDA, fp32 on CPU). Strings like ``"bfloat16"`` are accepted.
        **options: family options, e.g. ``retrieval="paper"`` (STAR memory fields) or ``rope_mode="reference"``
            (Flash family); an unknown option is an error naming it.

    Raises:
        FileNotFoundError: when the path has no ``config.json``.
        ValueError: for an unsupported ``model_type`` or a checkpoint whose keys don't match its layout.
    """
    from flash_vstream.model.registry import get_loader

    path = resolve_checkpoint(name_or_path)
    model_type = read_model_type(path)
    device = torch.device(device) if device is not None else _default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return get_loader(model_type)(path, device=device, dtype=dtype, **options)


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local directory as is; otherwise a Hub id, fetched into the local Hugging Face cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"--model {str(name_or_path)!r} is a file; pass the checkpoint directory")
    if str(name_or_path).count("/") != 1 or str(name_or_path).startswith((".", "/")):
        raise FileNotFoundError(
            f"checkpoint directory {str(name_or_path)!r} does not exist (and it is not a Hub id like 'org/name')"
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path)))


def read_model_type(path: Path) -> str:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a checkpoint directory?")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the checkpoint is corrupt") from err
    if "model_type" not in config:
        raise ValueError(f"{config_file} has no 'model_type' field, so its model family is unknown")
    return config["model_type"]


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
