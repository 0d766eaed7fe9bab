r"""Token-length estimates of training samples from metadata alone (no frame is decoded), for length grouping.

``estimate_length(sample, budget)`` = template tokens + text tokens + visual tokens:

- **visual** (:class:`StarBudget`, :class:`FlashBudget`): per medium, the family's visual-token count for the frames
  the model would see, computed by the family's own memory (``num_tokens``):

  ====================  ===========================================  =============================================
  medium                STAR (CLIP + STAR memory)                    Flash (Qwen-VL + Flash Memory)
  ====================  ===========================================  =============================================
  features ``(T,...)``  exact: ``num_tokens(T)`` (T from the header)  not readable (pixels only): unsupported
  image                 exact: ``num_tokens(1)`` = 64                 exact: 1 frame at the image's size (header)
  frame folder          exact: the sampler preset's frame count      exact: frame count and first frame's size
  video file            bound: the preset's ``max_frames``            bound: ``max_frames`` at the pixel cap
  ====================  ===========================================  =============================================

  With ``probe_videos=True`` a video's container is opened (metadata only, no decoding) and its count and size
  are exact too. The Flash count adds the ``<|vision_start|>``/``<|vision_end|>`` pair around each video.
  "Bound" is an upper bound: STAR's count saturates after N_spa + N_tem frames (681 tokens for 26 frames or more),
  so for real videos it is exact; Flash's bound is the largest patch grid the processor can produce under its
  pixel cap (448x448 for the published 200,704 pixels: 11,520 tokens at 240 frames).
- **text**: the turns' text with the media markers removed, counted by a real tokenizer when one is given
  (:class:`TokenizerCounter`), else by :class:`WordCounter`: one token per word (``\w+``), per punctuation
  character, per ``<|special|>`` token and per ``</s>``. BPE tokenizers give English text some 1.2-1.5x more
  tokens than that; the estimate is for grouping similar lengths, not for truncation.
- **template** (:data:`TEMPLATES`): what the conversation template adds: a system prompt once, role tags and
  end-of-turn tokens per turn, counted with the same counter. For ``chat_template`` with a tokenizer the counts
  come from rendering the tokenizer's own chat template (exact); ``plain`` (STAR stage 1) keeps only the media
  of user turns, not their text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Protocol

import torch

from flash_vstream.families import SamplerPreset, get_family
from flash_vstream.inference.prompts import VICUNA_SYSTEM
from flash_vstream.memory.flash import FlashMemory, FlashMemoryConfig
from flash_vstream.memory.star import StarMemory, StarMemoryConfig
from flash_vstream.train.data import MEDIA_MARKER, Media, Sample, UnusableMediaError
from flash_vstream.video.reader import IMAGE_EXTENSIONS
from flash_vstream.vision.qwen2vl import FlashFrameProcessor

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "TEMPLATES",
    "FlashBudget",
    "LengthBudget",
    "StarBudget",
    "TemplateText",
    "TextEstimate",
    "TokenizerCounter",
    "WordCounter",
    "budget_for_checkpoint",
    "checkpoint_family",
    "default_budget",
    "estimate_length",
    "estimate_lengths",
]

DEFAULT_MAX_LENGTH = {"star": 2048, "flash": 14000}
"""The published recipes' ``model_max_length`` per family (STAR stages 1 and 2; the Qwen recipe)."""

FAMILY_TEMPLATES = {"star": ("vicuna_v1", "plain", "chat_template"), "flash": ("chat_template",)}
"""Templates each family trains with; the first is the default without a checkpoint."""


@dataclass(frozen=True)
class TemplateText:
    """The fixed text a conversation template puts around the turns (what is counted, not how it is laid out)."""

    prompt: str
    """Once per sample: the system prompt."""
    user: str
    """Around each user turn: role tag and separators."""
    assistant: str
    """Around each assistant turn: role tag, separators and the end-of-turn token."""
    user_text: bool = True
    """Whether user turns' text is in the sequence (``plain`` keeps only their media)."""


_CHATML_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
TEMPLATES = {
    "vicuna_v1": TemplateText(VICUNA_SYSTEM, " USER: ", " ASSISTANT: </s>"),
    "plain": TemplateText("", "", "\n", user_text=False),
    "chat_template": TemplateText(
        _CHATML_SYSTEM, "<|im_start|>user\n<|im_end|>\n", "<|im_start|>assistant\n<|im_end|>\n"
    ),
}
"""Template texts; ``chat_template`` is Qwen's ChatML (used as is only without a tokenizer)."""


# ----------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------


class TextCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


class WordCounter:
    r"""Tokenizer-free estimate: one token per ``\w+`` word, punctuation character, ``<|special|>`` and ``</s>``.

    >>> WordCounter().count("Hello, world!</s>")
    5
    """

    name = "words"
    _pattern = re.compile(r"<\|[^|\s]+\|>|</?s>|\w+|[^\w\s]")

    def count(self, text: str) -> int:
        return len(self._pattern.findall(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [len(self._pattern.findall(text)) for text in texts]


class TokenizerCounter:
    """Tokens of a Hugging Face tokenizer, without the special tokens it adds (batched for speed)."""

    name = "tokenizer"

    def __init__(self, tokenizer, batch_size: int = 4096):
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_many(self, texts: Sequence[str]) -> list[int]:
        counts: list[int] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            counts.extend(len(ids) for ids in self.tokenizer(batch, add_special_tokens=False)["input_ids"])
        return counts


@dataclass(frozen=True)
class TextEstimate:
    """Text and template tokens of a sample under one conversation template."""

    counter: TextCounter
    """Counts the tokens of a text."""
    template: str
    """Name of the template (a key of :data:`TEMPLATES`)."""
    prompt: int
    """Template tokens once per sample (system prompt, BOS)."""
    user: int
    """Template tokens per user turn."""
    assistant: int
    """Template tokens per assistant turn (with the end-of-turn token)."""
    user_text: bool = True
    """Whether user turns' text is counted (``False`` for ``plain``)."""

    @classmethod
    def for_template(cls, template: str, tokenizer=None) -> TextEstimate:
        """The estimate of ``template``, counting with ``tokenizer`` (or :class:`WordCounter` when ``None``).

        Raises:
            ValueError: for an unknown template.
        """
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; use one of {sorted(TEMPLATES)}")
        text = TEMPLATES[template]
        if tokenizer is None:
            counter: TextCounter = WordCounter()
            prompt, user, assistant = (counter.count(s) for s in (text.prompt, text.user, text.assistant))
        elif template == "chat_template":
            counter = TokenizerCounter(tokenizer)
            prompt, user, assistant = _chat_template_overheads(tokenizer, counter)
        else:
            counter = TokenizerCounter(tokenizer)
            added = len(tokenizer("")["input_ids"])  # BOS of LLaMA tokenizers (LLaVA tokenizes with it)
            prompt, user, assistant = (counter.count(s) for s in (text.prompt, text.user, text.assistant))
            prompt += added
        return cls(counter, template, prompt, user, assistant, text.user_text)

    def texts(self, sample: Sample) -> list[str]:
        """The turn texts that are counted, media markers removed."""
        return [t.text.replace(MEDIA_MARKER, "") for t in sample.turns if self.user_text or t.role == "assistant"]

    def overhead(self, sample: Sample) -> int:
        """Template tokens of ``sample``."""
        users = sum(1 for t in sample.turns if t.role == "user")
        return self.prompt + users * self.user + (len(sample.turns) - users) * self.assistant


def _chat_template_overheads(tokenizer, counter: TextCounter) -> tuple[int, int, int]:
    """``(prompt, user, assistant)`` tokens the tokenizer's chat template adds, from rendering empty turns."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat_template' needs a tokenizer with a chat template; this one has none")

    def rendered(roles: list[str]) -> int:
        messages = [{"role": role, "content": ""} for role in roles]
        return counter.count(tokenizer.apply_chat_template(messages, tokenize=False))

    one, two, three = rendered(["user"]), rendered(["user", "assistant"]), rendered(["user", "assistant", "user"])
    user = three - two
    return one - user, user, two - one


# ----------------------------------------------------------------------------------------------------------
# Visual tokens
# ----------------------------------------------------------------------------------------------------------


def _frame_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image, from its header."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    return height, width


def _first_frame(folder: Path) -> Path:
    names = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return names[0]


@dataclass(frozen=True)
class StarBudget:
    """Visual tokens of the STAR family: its memory's ``num_tokens`` for the frames the model sees."""

    memory: StarMemoryConfig = field(default_factory=StarMemoryConfig)
    """The STAR memory's settings (the released 681-token memory by default)."""
    sampler: SamplerPreset = field(default_factory=lambda: get_family("star").sampler)
    """How frames are sampled from videos and frame folders (the family's preset)."""
    frames_fps: float = 1.0
    """Rate at which frame folders were extracted (the published pipelines use 1 fps)."""
    probe_videos: bool = False
    """Open video containers (metadata only) for exact counts instead of the ``max_frames`` bound."""
    family: ClassVar[str] = "star"

    def __post_init__(self) -> None:
        with torch.device("meta"):  # only counts are needed: no weights, no draw from the global RNG
            object.__setattr__(self, "_memory", StarMemory(self.memory))
        object.__setattr__(self, "_cache", {})

    def check(self, media: Media) -> None:
        """Raise :class:`UnusableMediaError` for media the memory cannot take.

        That is features of another patch grid or width, and (with ``probe_videos``) a video whose container
        cannot be read.
        """
        if media.kind == "video" and self.probe_videos:
            _probe(self._cache, media.path, self.sampler)
        if media.kind == "features":
            expected = (self.memory.feature_grid**2, self.memory.feature_dim)
            if tuple(media.shape[-2:]) != expected:
                raise UnusableMediaError(
                    f"features {media.path} have shape {media.shape}; this model's memory takes (T, {expected[0]}, "
                    f"{expected[1]}) (its CLIP tower's patches and width); re-extract them with that tower"
                )

    def frames(self, media: Media) -> int:
        """Frames the model sees of ``media`` (an upper bound for unprobed video files)."""
        if media.kind in ("features", "image"):
            return media.num_frames
        if media.kind == "frames":
            return _sampled(self.sampler, media.num_frames, self.frames_fps)
        if not self.probe_videos:
            return self.sampler.max_frames
        return _probe(self._cache, media.path, self.sampler)[0]

    def tokens(self, media: Media) -> int:
        """Visual tokens of ``media``."""
        self.check(media)
        return self._memory.num_tokens(self.frames(media))


@dataclass(frozen=True)
class FlashBudget:
    """Visual tokens of the Flash family: Flash Memory's count for the frames and patch grid the model sees."""

    memory: FlashMemoryConfig = field(default_factory=FlashMemoryConfig)
    """Flash Memory's settings (published: N_CSM 60, N_DAM 30)."""
    processor: FlashFrameProcessor = field(default_factory=FlashFrameProcessor)
    """Frame resizing (its ``max_pixels`` cap decides the patch grid)."""
    spatial_merge_size: int = 2
    """The patch merger's window side: one LLM token per ``spatial_merge_size**2`` memory tokens."""
    sampler: SamplerPreset = field(default_factory=lambda: get_family("flash").sampler)
    """How frames are sampled (the family's preset: 1 fps, at most 240)."""
    frames_fps: float = 1.0
    """Rate at which frame folders were extracted."""
    probe_videos: bool = False
    """Open video containers (metadata only) for exact counts and sizes instead of the bound."""
    marker_tokens: int = 2
    """Tokens around each video: ``<|vision_start|>`` and ``<|vision_end|>``."""
    family: ClassVar[str] = "flash"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_memory", FlashMemory(self.memory, self.spatial_merge_size))
        object.__setattr__(self, "_cache", {})

    def check(self, media: Media) -> None:
        """Raise :class:`UnusableMediaError` for media this family cannot take.

        That is pre-extracted features (this family encodes pixels itself), and (with ``probe_videos``) a video
        whose container cannot be read.
        """
        if media.kind == "video" and self.probe_videos:
            _probe(self._cache, media.path, self.sampler)
        if media.kind == "features":
            raise UnusableMediaError(
                f"{media.path} holds pre-extracted CLIP features, which only the STAR family reads; the Flash family "
                "encodes pixels (point the source at the videos or frame folders)"
            )

    def frames_and_size(self, media: Media) -> tuple[int, tuple[int, int] | None]:
        """Frames the model sees and the frames' ``(height, width)`` (``None``: unknown, use the pixel cap)."""
        cache = self._cache
        if media.kind == "image":
            if media.path not in cache:
                cache[media.path] = _frame_size(media.path)
            return 1, cache[media.path]
        if media.kind == "frames":
            if media.path not in cache:
                cache[media.path] = _frame_size(_first_frame(media.path))
            return _sampled(self.sampler, media.num_frames, self.frames_fps), cache[media.path]
        if not self.probe_videos:
            return self.sampler.max_frames, None
        return _probe(cache, media.path, self.sampler)

    def tokens(self, media: Media) -> int:
        """Visual tokens of ``media``, with the vision markers."""
        self.check(media)
        frames, size = self.frames_and_size(media)
        if size is None:
            grid = _largest_grid(self.processor)
        else:
            grid = self.processor.grid_thw(frames, *size)[1:]
        return self._memory.num_tokens(frames, grid_hw=grid) + self.marker_tokens


@lru_cache(maxsize=4096)
def _sampled(sampler: SamplerPreset, num_frames: int, fps: float) -> int:
    """Frames the preset's sampler picks from ``num_frames`` frames at ``fps`` (cached: folders repeat sizes)."""
    return int(sampler.build().indices(num_frames, fps).size)


def _probe(cache: dict, path: Path, sampler: SamplerPreset) -> tuple[int, tuple[int, int]]:
    """``(sampled frames, (height, width))`` of a video file, from its container's metadata (cached)."""
    key = ("probe", path)
    if key not in cache:
        from flash_vstream.video.reader import VideoError, probe_video

        try:
            info = probe_video(path)
        except VideoError as err:
            raise UnusableMediaError(str(err), "unreadable_media") from None
        cache[key] = (_sampled(sampler, info.num_frames, info.fps), (info.height, info.width))
    return cache[key]


def _largest_grid(processor: FlashFrameProcessor) -> tuple[int, int]:
    """The patch grid with the most patches any frame can be resized to under ``processor.max_pixels``.

    Resized sides are multiples of ``processor.factor`` with an area of at most ``max_pixels`` (aspect ratio at
    most 200), so the search runs over those sides.
    """
    factor, cap = processor.factor, processor.max_pixels
    best = (factor, factor)
    for height in range(factor, cap // factor + 1, factor):
        width = cap // height // factor * factor
        if width < factor:
            break
        if max(height, width) > 200 * min(height, width):
            continue
        area, best_area = height * width, best[0] * best[1]
        # Among grids of equal area (equal token counts) report the squarest, the usual frame shape.
        if area > best_area or (area == best_area and abs(height - width) < abs(best[0] - best[1])):
            best = (height, width)
    return best[0] // processor.patch_size, best[1] // processor.patch_size


class VisualBudget(Protocol):
    family: str

    def check(self, media: Media) -> None: ...

    def tokens(self, media: Media) -> int: ...


# ----------------------------------------------------------------------------------------------------------
# Budget = visual + text
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthBudget:
    """Everything :func:`estimate_length` needs: a family's visual budget and a text estimate."""

    visual: VisualBudget
    """Visual tokens per medium (:class:`StarBudget` or :class:`FlashBudget`)."""
    text: TextEstimate
    """Text and template tokens."""

    @property
    def family(self) -> str:
        return self.visual.family

    def check_media(self, media: Media) -> None:
        """The family's check of what it can read (pass as ``media_check`` when loading data)."""
        self.visual.check(media)


def estimate_length(sample: Sample, budget: LengthBudget) -> int:
    """Estimated tokens of ``sample``: template + text + visual (see the module docstring).

    Raises:
        UnusableMediaError: for a medium the family cannot read.
    """
    text = budget.text
    total = text.overhead(sample) + sum(text.counter.count(t) for t in text.texts(sample))
    return total + sum(budget.visual.tokens(m) for m in sample.media)


def estimate_lengths(samples: Sequence[Sample], budget: LengthBudget) -> list[int]:
    """:func:`estimate_length` of every sample, with the texts counted in batches (fast with a tokenizer)."""
    text = budget.text
    texts, owners = [], []
    for i, sample in enumerate(samples):
        pieces = text.texts(sample)
        texts.extend(pieces)
        owners.extend([i] * len(pieces))
    totals = [text.overhead(s) + sum(budget.visual.tokens(m) for m in s.media) for s in samples]
    for owner, count in zip(owners, text.counter.count_many(texts), strict=True):
        totals[owner] += count
    return totals


def default_budget(
    family: str = "star", template: str | None = None, tokenizer=None, probe_videos: bool = False
) -> LengthBudget:
    """The published defaults of ``family`` ("star": 681-token memory; "flash": 448x448 cap, 240 frames).

    Raises:
        ValueError: for an unknown family or a template the family does not train with.
    """
    template = _check_template(family, template)
    visual = StarBudget(probe_videos=probe_videos) if family == "star" else FlashBudget(probe_videos=probe_videos)
    return LengthBudget(visual, TextEstimate.for_template(template, tokenizer))


def _check_template(family: str, template: str | None) -> str:
    if family not in FAMILY_TEMPLATES:
        raise ValueError(f"unknown family {family!r}; use one of {sorted(FAMILY_TEMPLATES)}")
    allowed = FAMILY_TEMPLATES[family]
    if template is None:
        return allowed[0]
    if template not in allowed:
        raise ValueError(f"the {family} family trains with template(s) {allowed}, not {template!r}")
    return template


def checkpoint_family(path: str | Path) -> str:
    """The family (registry name) of a local checkpoint folder, from its ``config.json`` alone.

    Its ``flash_vstream_family`` marker decides, else its ``model_type``: a marked StreamingVLM checkpoint is not
    the Flash family's.

    Raises:
        FileNotFoundError: when ``path`` is not a folder with a ``config.json``.
        ValueError: for a config no family reads.
    """
    from flash_vstream.families import family_for_config
    from flash_vstream.model.loading import read_checkpoint_config

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {path} is not a folder; data check reads a local checkpoint's config.json")
    return family_for_config(read_checkpoint_config(path), where=str(path)).name


def budget_for_checkpoint(
    path: str | Path, template: str | None = None, *, use_tokenizer: bool = True, probe_videos: bool = False
) -> LengthBudget:
    """The budget of a local checkpoint folder, from its ``config.json`` and tokenizer (no weights are read).

    Args:
        path: checkpoint folder of a family that trains on LLaVA-style rows (STAR, Flash).
        template: conversation template; default: the checkpoint's (STAR ``conv_template``; Flash
            ``chat_template``).
        use_tokenizer: count text with the checkpoint's tokenizer (else the words estimate).
        probe_videos: see :attr:`StarBudget.probe_videos`.

    Raises:
        FileNotFoundError: when ``path`` is not a folder with a ``config.json``.
        ValueError: for a config no family reads, a family without such a budget (StreamingVLM), a bad template,
            or a missing tokenizer.
    """
    family = checkpoint_family(path)
    if family not in _CHECKPOINT_BUDGETS:
        raise ValueError(
            f"--model {path} is a {family}-family checkpoint, which trains on its own records, not LLaVA-style rows "
            "(StreamingVLM: chunk files; flash-vstream data check --model reports their lengths)"
        )
    path = Path(path)
    visual, own_template = _CHECKPOINT_BUDGETS[family](path, probe_videos)
    template = _check_template(family, template or own_template)
    tokenizer = _load_tokenizer(path) if use_tokenizer else None
    return LengthBudget(visual, TextEstimate.for_template(template, tokenizer))


def _star_checkpoint(path: Path, probe_videos: bool) -> tuple[StarBudget, str]:
    from flash_vstream.model.checkpoints import read_star_config

    config = read_star_config(path)
    return StarBudget(config.star_memory_config(), probe_videos=probe_videos), config.conv_template


def _flash_checkpoint(path: Path, probe_videos: bool) -> tuple[FlashBudget, str]:
    from flash_vstream.model.qwen2vl import flash_memory_config
    from flash_vstream.model.qwen2vl_checkpoints import build_config

    config = build_config(path)
    memory = flash_memory_config(config)
    vision = config.vision_config
    processor = FlashFrameProcessor(
        patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size,
        temporal_patch_size=vision.temporal_patch_size,
        pool_size=memory.temporal_poolsize,
    )
    budget = FlashBudget(memory, processor, vision.spatial_merge_size, probe_videos=probe_videos)
    return budget, "chat_template"


_CHECKPOINT_BUDGETS: dict[str, Callable[[Path, bool], tuple[VisualBudget, str]]] = {
    "star": _star_checkpoint,
    "flash": _flash_checkpoint,
}


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    from flash_vstream.model.auto import register_auto_classes

    register_auto_classes()  # so the tokenizer loader reads the family's config.json as that family's config
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot load the tokenizer of {path} ({str(err).splitlines()[0] if str(err) else err!r}); save the "
            "tokenizer into the checkpoint folder, or count text with the words estimate"
        ) from None
