"""``FlashVStream``: the user-facing object that answers questions about a video, and ``load_model``.

One class serves both model families. What differs between them (how frames become model inputs, which prompt
template is used) lives in a family's *input builder*, a callable with the signature::

    builder(question, *, frames=None, features=None, assistant_prefix="") -> dict   # kwargs for model.generate

``frames`` is a uint8 array ``(T, H, W, 3)``; ``features`` are pre-extracted vision features (STAR only). The
returned dict goes to ``model.generate`` unchanged, through the session's :class:`~flash_vstream.inference.decode.
Decoder` (``FlashVStream.decoder``): on CUDA a static KV cache with the decode step compiled into CUDA graphs once,
when the model is loaded; elsewhere transformers' default ``generate``. :meth:`FlashVStream.set_decoder` switches.

Long videos (``answer(video=...)``) are read by the family's input builder (``read_video``), in chunks wherever
the family's offline algorithm allows it: the STAR memory needs only each frame's features pooled to its spatial grid,
so each chunk of frames is preprocessed, encoded and pooled, then dropped; the memory compresses the pooled clip,
with exactly the tokens of the all-frames path. Peak RAM is one chunk of frames plus the pooled features (about
0.13 MB a frame at bf16), whatever the video's length. The Flash family samples at most 240 frames
(``max_frames``), so its frames are bounded already and it reads them in one go.

>>> vs = load_model("IVGSZ/Flash-VStream-7b")                       # doctest: +SKIP
>>> vs.answer("What is the person doing?", video="assets/sample.mp4")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import CompileConfig

from flash_vstream.inference.decode import Decoder, cache_len_for
from flash_vstream.video import FrameSampler

WARMUP_FRAMES = np.zeros((2, 56, 56, 3), dtype=np.uint8)
"""The clip of the warm-up answer that compiles the decode step (any frames take the answers' decode path)."""
WARMUP_TOKENS = 4  # the first replays of a compiled step record its CUDA graph; a few steps get past that


@dataclass
class Answer:
    """An answer with the facts a user may want to log.

    Attributes:
        text: the generated text (the assistant prefix, if any, is not repeated).
        num_frames: frames the memory saw.
        num_visual_tokens: visual tokens spliced into the prompt.
        prompt_tokens: total prompt length in tokens (text + visual).
        timeline: what the memory the answer used holds on the stream's time axis (a
            :class:`~flash_vstream.inference.timeline.Timeline`): always for a ``StreamSession`` answer, for
            ``answer_with_details`` when asked (``timeline=True``); else ``None``.
    """

    text: str
    num_frames: int
    num_visual_tokens: int
    prompt_tokens: int
    timeline: Any = None


class FlashVStream:
    """A loaded model plus everything needed to answer questions about videos.

    Args:
        model: a family model (``FlashVStreamForCausalLM`` or the Flash-Memory Qwen-VL model).
        tokenizer: its tokenizer.
        input_builder: the family's input builder (see the module docstring); its ``count_visual_tokens(inputs)``
            says how many visual tokens a built input holds (for reporting).
        sampler: how frames are picked from a video file when the caller passes ``video=``.
        family: the family's registry name (``"star"``, ``"flash"``).
        decode: how answers decode (:data:`~flash_vstream.inference.decode.DECODE_MODES`); the default
            ``"auto"`` compiles a static-cache decode step on CUDA now (see :meth:`set_decoder`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        input_builder: Callable[..., dict[str, Any]],
        sampler: FrameSampler,
        *,
        family: str | None = None,
        decode: str = "auto",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.input_builder = input_builder
        self.sampler = sampler
        self.family = family
        self.decoder: Decoder = self.set_decoder(decode)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_decoder(
        self,
        mode: str = "auto",
        *,
        max_cache_len: int | None = None,
        compile_config: CompileConfig | None = None,
        warmup: bool = True,
    ) -> Decoder:
        """Choose how answers decode, and compile now (outside any answer) when the mode compiles.

        Args:
            mode: ``"auto"`` (``"compiled"`` on CUDA, else ``"eager"``), ``"eager"`` (transformers' default
                ``generate``: the switch that turns fast decoding off), ``"static"`` (static KV cache, no
                compilation) or ``"compiled"`` (static KV cache, decode step compiled into CUDA graphs).
            max_cache_len: positions of the static cache: the longest prompt plus answer expected (default: the
                family's largest memory read-out, ``input_builder.max_visual_tokens()``, plus 1,024 text tokens:
                1,792 for STAR, 12,544 for Flash at 448x448). A longer prompt grows it and recompiles.
            compile_config: transformers ``CompileConfig`` of the compiled mode (default: inductor with
                ``mode="reduce-overhead"``).
            warmup: compile (with a short warm-up answer) now; its cost is ``decoder.compile_seconds``.

        Returns:
            The new decoder (also ``self.decoder``).

        Raises:
            ValueError: for an unknown mode or a bad ``max_cache_len``.
        """
        if max_cache_len is None:
            max_cache_len = cache_len_for(self.input_builder.max_visual_tokens())
        self.decoder = Decoder.for_model(self.model, mode, max_cache_len=max_cache_len, compile_config=compile_config)
        if warmup:
            self.decoder.warmup(self._warmup_answer)
        return self.decoder

    def _warmup_answer(self) -> None:
        """A short answer through the real path, so the compiled step sees the shapes every answer has."""
        self.answer_with_details(
            "warm-up", frames=WARMUP_FRAMES, max_new_tokens=WARMUP_TOKENS, min_new_tokens=WARMUP_TOKENS
        )

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
        progress: bool = False,
        timeline: bool = False,
        **generation,
    ) -> Answer:
        """Answer ``question`` about a video given as a file, decoded frames or pre-extracted features.

        Args:
            question: the user's question.
            frames: uint8 ``(T, H, W, 3)`` RGB frames (already sampled), or one ``(H, W, 3)`` image.
            video: a video file, frame directory or image; frames are sampled with ``self.sampler``.
            features: pre-extracted vision features (families that accept them); for STAR also the features
                pooled to the memory's spatial grid (``model.memory.pool_frames``).
            timestamps: seconds of each frame (informational; the memory orders frames by index).
            assistant_prefix: text the assistant's reply starts with (e.g. ``"Best option: ("``).
            max_new_tokens: generation budget.
            progress: show a progress bar while a long ``video`` is decoded.
            timeline: also return the memory's timeline (``Answer.timeline``; costs a second vision pass, and
                a second decode of ``video`` for its thumbnails).
            **generation: further ``generate`` arguments (greedy decoding by default).

        Returns:
            An :class:`Answer`: the text plus frame and token counts.
        """
        given = sum(x is not None for x in (frames, video, features))
        if given != 1:
            raise ValueError("pass exactly one of frames=, video= or features= to answer()")
        if video is not None:  # the family's builder reads it (STAR: in chunks, into pooled features)
            media = self.input_builder.read_video(video, self.sampler, progress=progress)
            frames, features = media.get("frames"), media.get("features")
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[None]  # one (H, W, 3) image is a 1-frame video
        inputs = self.input_builder(question, frames=frames, features=features, assistant_prefix=assistant_prefix)
        inputs = {key: _to_device(value, self.device) for key, value in inputs.items()}
        generation.setdefault("do_sample", False)
        generation.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        output = self.decoder.generate(self.model, **inputs, max_new_tokens=max_new_tokens, **generation)
        new_tokens = _strip_prompt(output, inputs.get("input_ids"))
        text = self.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()
        num_frames = len(frames) if frames is not None else len(features)
        prompt_len = int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else 0
        answer = Answer(text, num_frames, self.input_builder.count_visual_tokens(inputs), prompt_len)
        if timeline:
            from flash_vstream.inference.timeline import offline_timeline

            answer.timeline = offline_timeline(self, frames=frames, features=features, video=video,
                                               timestamps=timestamps)
        return answer


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
    *,
    family: str | None = None,
    decode: str = "auto",
    **options,
) -> FlashVStream:
    """Load a checkpoint (a local directory or a Hugging Face Hub id) into a ready :class:`FlashVStream`.

    Dispatches on the checkpoint's own ``model_type`` through the family registry (:mod:`flash_vstream.families`),
    or on ``family`` / the checkpoint's ``flash_vstream_family`` marker where a ``model_type`` is shared
    (:func:`~flash_vstream.families.family_for_config`).

    Args:
        name_or_path: local checkpoint directory or Hub id such as ``"IVGSZ/Flash-VStream-7b"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (default: CUDA when available, else CPU).
        dtype: ``"bfloat16"``, ``"float16"``, ``"float32"``, ``"auto"`` (the checkpoint's) or a ``torch.dtype``
            (default: bf16 on CUDA, fp32 on CPU).
        family: the family the caller expects (e.g. from a preset); it selects the family of a shared
            ``model_type`` (``"streamingvlm"`` for a plain Qwen2.5-VL checkpoint); a checkpoint the family cannot
            load is an error.
        decode: how answers decode (:meth:`FlashVStream.set_decoder`): ``"auto"`` compiles a static-cache decode
            step into CUDA graphs at load on CUDA (about half a minute, then several times faster per token) and
            decodes eagerly elsewhere; ``"eager"`` never compiles (best for a single question).
        **options: family options, e.g. ``retrieval="paper"`` (STAR memory fields) or ``rope_mode="reference"``
            (Flash family); an unknown option is an error naming it.

    Raises:
        FileNotFoundError: when the checkpoint cannot be found or fetched.
        ValueError: for a bad device/dtype/option, an unsupported ``model_type``, an invalid ``config.json`` or
            a checkpoint whose keys don't match its layout.
    """
    from transformers import AutoTokenizer

    from flash_vstream.families import family_for_config
    from flash_vstream.model.auto import register_auto_classes
    from flash_vstream.model.loading import read_checkpoint_config, resolve_checkpoint, resolve_device, resolve_dtype

    device = resolve_device(device)
    path = resolve_checkpoint(name_or_path)
    dtype = resolve_dtype(dtype, device, checkpoint=path)
    found = family_for_config(read_checkpoint_config(path), family, where=str(path))
    options = found.check_options(options, where="model options")
    register_auto_classes()
    try:
        model = found.resolve("load_model")(path, dtype=dtype, device=device, **options)
    except StrictDataclassError as err:  # a config.json field of the wrong type or an impossible combination
        cause = str(err.__cause__ or err).strip().replace("\n", " ")
        raise ValueError(f"{path / 'config.json'} is invalid: {cause}. Fix that field in config.json") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} holds no loadable tokenizer ({reason}); save it beside the weights") from None
    builder = found.resolve("input_builder").for_model(model, tokenizer)
    return FlashVStream(model, tokenizer, builder, found.sampler.build(), family=found.name, decode=decode)
