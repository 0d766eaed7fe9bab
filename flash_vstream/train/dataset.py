r"""Training samples -> model inputs: the per-family :class:`SampleEncoder` and the :class:`TrainDataset`.

The API the trainer calls::

    encoder = sample_encoder_for(model, tokenizer, template=None, max_length=2048, sampler=None)
    dataset = TrainDataset(samples, encoder)      # a torch Dataset; dataset[i] = encoder(samples[i])
    dataset.lengths                               # estimated tokens per sample, for a length-grouped sampler
    collate = collator_for(model, tokenizer)      # flash_vstream.train.collate: list of samples -> batch

``encoder(sample)`` returns the tensors of ONE sample (l: tokens, t: frames):

===============  =============================================================================================
key              value
===============  =============================================================================================
``input_ids``    ``(l,)`` int64; STAR visual tokens are ``config.image_token_id`` placeholders (one per memory
                 token), Flash ones ``<|video_pad|>`` tokens
``labels``       ``(l,)`` int64: the token id where the loss applies (assistant replies, see
                 :mod:`flash_vstream.train.templates`), -100 elsewhere (prompt, visual tokens)
STAR             ``pixel_values (t, 3, H, W)`` float32 from a video, frame folder or image (an image is a 1-frame
                 video), or ``features (t, n, d)`` from a safetensors ``{"feature": (T, 256, 1024)}`` file (image
                 features ``(256, 1024)`` are 1 frame), as stored; neither for a text-only sample
Flash            ``mm_token_type_ids (l,)`` (2 at video tokens, 0 elsewhere), and for a sample with media
                 ``pixel_values_videos (patches, c*tp*p*p)`` float32 and ``video_grid_thw (k, 3)`` (k videos;
                 an image is a 1-frame video)
===============  =============================================================================================

The family comes from the model (``model.config.model_type`` through the family registry), never from a path.
Frames are sampled with the family's preset (STAR: 1 fps, up to 14,400 frames; Flash: 1 fps, up to 240), or the
``sampler`` given. Visual-token counts are the model's own (its memory's ``num_tokens``), so the splice in the
model's forward always finds one placeholder per visual token.

**Over-long samples** (more than ``max_length`` tokens) are cut at ``max_length``: only text after the last
visual token goes, never a visual token (the model needs all of them, one per memory token). The first cut is
warned about (:class:`TruncationWarning`); every cut is counted in ``encoder.truncated`` (per process: each
DataLoader worker has its own count). A sample whose visual tokens alone end beyond ``max_length`` cannot be cut
and raises :class:`SampleTooLongError` (raise ``max_length`` or sample fewer frames). A cut can remove every
supervised token; such a sample adds nothing to the loss.

**What each family can take** is checked for all samples when the dataset is built, from metadata only, so a
bad mixture fails before training starts (:class:`~flash_vstream.train.data.DataError`): STAR takes at most one
medium per sample and pre-extracted features and frames are not mixed in one dataset (its model takes one kind
per batch); ``plain`` takes one exchange; Flash takes no features. Media that fail to decode later raise
:class:`SampleError` naming the row.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from flash_vstream.families import SamplerPreset, family_for_config, get_family
from flash_vstream.train.data import FEATURE_KEY, DataError, Media, Sample
from flash_vstream.train.lengths import FlashBudget, LengthBudget, StarBudget, TextEstimate, estimate_lengths
from flash_vstream.train.templates import (
    STAR_TEMPLATES,
    render_conversation,
    render_flash,
    tokenize_conversation,
)

__all__ = [
    "FlashSampleEncoder",
    "SampleEncoder",
    "SampleError",
    "SampleTooLongError",
    "StarSampleEncoder",
    "TrainDataset",
    "TruncationWarning",
    "sample_encoder_for",
]

VIDEO_TOKEN_TYPE = 2
"""``mm_token_type_ids`` of a ``<|video_pad|>`` token (as transformers' Qwen-VL processors write it)."""


class SampleError(ValueError):
    """A sample that cannot be encoded (an unreadable medium, a features file of the wrong shape); names the row."""


class SampleTooLongError(SampleError):
    """A sample whose visual tokens alone end beyond ``max_length`` (it cannot be cut without cutting them)."""


class TruncationWarning(UserWarning):
    """A sample longer than ``max_length`` was cut (warned once per encoder; all cuts are counted)."""


class SampleEncoder:
    """Shared part of the family encoders: truncation, the cut counter and the per-dataset checks.

    Subclasses set ``family``, ``template``, ``length_budget`` and implement ``encode`` and ``check``.
    """

    family: str
    template: str
    max_length: int
    length_budget: LengthBudget
    """Token-length estimates of this encoder's samples (:mod:`flash_vstream.train.lengths`)."""
    mixed_kinds_ok: bool = True
    """Whether one dataset may mix visual input kinds (features and frames)."""

    def __init__(self, max_length: int, tokenizer):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"training needs a fast tokenizer (token offsets locate the labels); {type(tokenizer).__name__} is "
                "not one: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        self.max_length = max_length
        self.truncated = 0
        """Samples cut to ``max_length`` so far (in this process)."""

    def __call__(self, sample: Sample) -> dict[str, torch.Tensor]:
        """The tensors of ``sample`` (see the module docstring).

        Raises:
            SampleError: naming the row, when a medium cannot be read or the sample cannot be cut.
        """
        try:
            return self.encode(sample)
        except SampleError:
            raise
        except ValueError as err:  # VideoError, bad features: name the row, keep the cause
            raise SampleError(f"{sample.where} (id {sample.id}): {err}") from err

    def encode(self, sample: Sample) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def check(self, sample: Sample) -> str | None:
        """Raise ``ValueError`` if this encoder cannot take ``sample``; returns its visual input kind (or None)."""
        raise NotImplementedError

    def check_all(self, samples: Sequence[Sample]) -> None:
        """:meth:`check` every sample, from metadata only.

        Raises:
            DataError: naming the first sample that fails and how many do.
        """
        failures, first, kinds = 0, None, {}
        for sample in samples:
            try:
                kind = self.check(sample)
            except ValueError as err:
                failures += 1
                first = first or f"{sample.where} (id {sample.id}): {err}"
                continue
            if kind is not None:
                kinds.setdefault(kind, sample)
        if failures:
            raise DataError(f"{failures} of {len(samples)} samples cannot be trained on; the first: {first}")
        if len(kinds) > 1 and not self.mixed_kinds_ok:
            where = ", ".join(f"{kind} (e.g. {s.where})" for kind, s in sorted(kinds.items()))
            raise DataError(
                f"the samples mix visual inputs ({where}); the {self.family} model takes one kind per batch: "
                "extract features for every source (flash-vstream extract-features) or read every source's videos"
            )

    def _finish(
        self, sample: Sample, ids: list[int], labels: list[int], is_visual: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids``/``labels`` as int64 tensors, cut to ``max_length`` (never before the last visual token)."""
        ids_t, labels_t = torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
        if len(ids) <= self.max_length:
            return ids_t, labels_t
        positions = is_visual(ids_t).nonzero()
        visual_end = int(positions[-1]) + 1 if len(positions) else 0
        if visual_end > self.max_length:
            raise SampleTooLongError(
                f"{sample.where} (id {sample.id}): its visual tokens end at token {visual_end}, beyond max_length "
                f"{self.max_length}; raise max_length to at least {visual_end} or sample fewer frames"
            )
        if not self.truncated:
            warnings.warn(
                f"{sample.where} (id {sample.id}) has {len(ids)} tokens, more than max_length {self.max_length}; "
                "cut to max_length after its visual tokens (further cuts are counted in encoder.truncated, "
                "not warned)",
                TruncationWarning,
                stacklevel=3,
            )
        self.truncated += 1
        return ids_t[: self.max_length], labels_t[: self.max_length]


def _read_frames(media: Media, sampler: SamplerPreset, frames_fps: float):
    """uint8 ``(t, H, W, 3)`` frames of a video, frame folder or image (an image is one frame)."""
    from flash_vstream.video.reader import read_video

    return read_video(media.path, sampler=sampler.build(), frames_fps=frames_fps).frames


def _sampler(family: str, sampler: SamplerPreset | None) -> SamplerPreset:
    if sampler is None:
        return get_family(family).sampler
    if not isinstance(sampler, SamplerPreset):
        raise ValueError(
            f"sampler must be a flash_vstream.families.SamplerPreset (policy, target_fps, min_frames, max_frames), "
            f"got {type(sampler).__name__}"
        )
    return sampler


# ----------------------------------------------------------------------------------------------------------
# STAR
# ----------------------------------------------------------------------------------------------------------


class StarSampleEncoder(SampleEncoder):
    """STAR-family samples: ``plain``/``vicuna_v1``/``chat_template`` text, CLIP frames or pre-extracted features.

    Args:
        config: the model's ``FlashVStreamConfig``.
        tokenizer: the model's (fast) tokenizer.
        template: one of :data:`~flash_vstream.train.templates.STAR_TEMPLATES`; default ``config.conv_template``.
        max_length: most tokens of a sample (see the module docstring).
        sampler: frame sampling of videos and frame folders; default the family's preset.
        frames_fps: rate frame folders were extracted at.
    """

    family = "star"
    mixed_kinds_ok = False

    def __init__(self, config, tokenizer, *, template=None, max_length: int, sampler=None, frames_fps: float = 1.0):
        from flash_vstream.memory.star import StarMemory
        from flash_vstream.vision.clip import CLIPFrameProcessor

        super().__init__(max_length, tokenizer)
        template = template or config.conv_template
        if template not in STAR_TEMPLATES:
            raise ValueError(f"template must be one of {STAR_TEMPLATES} for the STAR family, got {template!r}")
        self.template, self.tokenizer = template, tokenizer
        self.placeholder_id = config.image_token_id
        self.sampler, self.frames_fps = _sampler("star", sampler), frames_fps
        self.processor = CLIPFrameProcessor.from_vision_config(config.vision_config, aspect=config.image_aspect_ratio)
        memory = config.star_memory_config()
        self.feature_shape = (memory.feature_grid**2, memory.feature_dim)
        # The memory module is built only for its token count; its random init must not move the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            self.memory = StarMemory(memory)
            visual = StarBudget(memory, sampler=self.sampler, frames_fps=frames_fps)
        self.length_budget = LengthBudget(visual, TextEstimate.for_template(template, tokenizer))

    def check(self, sample: Sample) -> str | None:
        if len(sample.media) > 1:
            raise ValueError(f"it has {len(sample.media)} media; a STAR sample holds at most one image or video")
        if self.template == "plain" and len(sample.turns) != 2:
            raise ValueError(f"template 'plain' takes one exchange, the sample has {len(sample.turns) // 2}")
        if not sample.media:
            return None
        media = sample.media[0]
        if media.kind == "features" and tuple(media.shape[-2:]) != self.feature_shape:
            expected = (media.shape[0] if len(media.shape) == 3 else 1, *self.feature_shape)
            raise ValueError(f"features {media.path} have shape {media.shape}; this model takes {expected}")
        return "features" if media.kind == "features" else "frames"

    def visual_input(self, media: Media) -> tuple[str, torch.Tensor]:
        """``("features", (t, n, d))`` as stored, or ``("pixel_values", (t, 3, H, W))`` float32."""
        if media.kind == "features":
            from safetensors import safe_open

            with safe_open(str(media.path), framework="pt") as handle:
                if FEATURE_KEY not in handle.keys():
                    raise ValueError(f"{media.path} holds no {FEATURE_KEY!r} tensor; re-extract the features")
                feature = handle.get_tensor(FEATURE_KEY)
            if feature.dim() == 2:
                feature = feature.unsqueeze(0)  # image features (n, d) -> one frame
            if feature.dim() != 3 or tuple(feature.shape[1:]) != self.feature_shape:
                raise ValueError(
                    f"{media.path}: feature of shape {tuple(feature.shape)}, expected (T, *{self.feature_shape}); "
                    "re-extract it with this model's vision tower"
                )
            return "features", feature
        return "pixel_values", self.processor(_read_frames(media, self.sampler, self.frames_fps))

    def encode(self, sample: Sample) -> dict[str, torch.Tensor]:
        self.check(sample)
        visual = dict(self.visual_input(m) for m in sample.media)
        counts = [self.memory.num_tokens(v.shape[0]) for v in visual.values()]
        conversation = render_conversation(self.template, sample.turns, self.tokenizer)
        ids, labels = tokenize_conversation(
            self.tokenizer, conversation, placeholder_id=self.placeholder_id, visual_counts=counts
        )
        input_ids, labels = self._finish(sample, ids, labels, lambda t: t == self.placeholder_id)
        return {"input_ids": input_ids, "labels": labels, **visual}


# ----------------------------------------------------------------------------------------------------------
# Flash
# ----------------------------------------------------------------------------------------------------------


class FlashSampleEncoder(SampleEncoder):
    """Flash-family samples: the published Qwen-VL sequence layout, video pixels.

    Args:
        builder: the model's :class:`~flash_vstream.inference.qwen2vl_inputs.FlashInputBuilder` (frame
            processing, token counts and special tokens are the inference ones).
        max_length: most tokens of a sample (see the module docstring).
        sampler: frame sampling; default the family's preset.
        frames_fps: rate frame folders were extracted at.
    """

    family = "flash"
    template = "chat_template"

    def __init__(self, builder, *, max_length: int, sampler=None, frames_fps: float = 1.0):
        super().__init__(max_length, builder.tokenizer)
        self.builder, self.tokenizer = builder, builder.tokenizer
        self.sampler, self.frames_fps = _sampler("flash", sampler), frames_fps
        self.video_id = self.tokenizer.convert_tokens_to_ids(builder.video_token)
        memory = builder.memory
        visual = FlashBudget(
            memory.config, builder.frame_processor, memory.spatial_merge_size, self.sampler, frames_fps=frames_fps
        )
        self.length_budget = LengthBudget(visual, TextEstimate.for_template("chat_template", self.tokenizer))

    def check(self, sample: Sample) -> str | None:
        for media in sample.media:
            if media.kind == "features":
                raise ValueError(
                    f"{media.path} holds pre-extracted CLIP features; the Flash family encodes pixels (point the "
                    "source at the videos or frame folders)"
                )
        return "frames" if sample.media else None

    def encode(self, sample: Sample) -> dict[str, torch.Tensor]:
        self.check(sample)
        builder, pixels, grids, blocks, total = self.builder, [], [], [], 0
        for media in sample.media:
            frames = _read_frames(media, self.sampler, self.frames_fps)
            patches, grid = builder.frame_processor(frames)
            count = builder.num_video_tokens(len(frames), frames.shape[1], frames.shape[2])
            pixels.append(patches)
            grids.append(grid)
            blocks.append(builder.vision_start + builder.video_token * count + builder.vision_end)
            total += count
        conversation = render_flash(sample.turns, self.tokenizer, "".join(blocks))
        ids, labels = tokenize_conversation(self.tokenizer, conversation, add_special_tokens=False)
        found = sum(1 for token in ids if token == self.video_id)
        if found != total:
            raise ValueError(
                f"the tokenized sample holds {found} {builder.video_token} tokens, expected {total}; the tokenizer "
                f"must keep {builder.video_token} as one special token"
            )
        input_ids, labels = self._finish(sample, ids, labels, lambda t: t == self.video_id)
        out = {
            "input_ids": input_ids,
            "labels": labels,
            "mm_token_type_ids": (input_ids == self.video_id).long() * VIDEO_TOKEN_TYPE,
        }
        if pixels:
            out["pixel_values_videos"] = torch.cat(pixels)
            out["video_grid_thw"] = torch.cat(grids)
        return out


# ----------------------------------------------------------------------------------------------------------
# Construction and the dataset
# ----------------------------------------------------------------------------------------------------------


def sample_encoder_for(
    model, tokenizer, *, template: str | None = None, max_length: int, sampler: SamplerPreset | None = None
) -> SampleEncoder:
    """The sample encoder of ``model``'s family (its config's family marker, else its ``model_type``).

    The encoder keeps no reference to the model (DataLoader workers copy it), only what it needs from its config.

    Args:
        model: a STAR or Flash model (a PEFT wrapper of one works too).
        tokenizer: the model's fast tokenizer.
        template: STAR: ``plain``, ``vicuna_v1`` or ``chat_template`` (default: the config's ``conv_template``);
            Flash: ``None`` or ``chat_template`` (the published layout).
        max_length: most tokens of a sample.
        sampler: frame sampling of videos and frame folders; default the family's preset.

    Raises:
        ValueError: for an unsupported model type or a StreamingVLM model (chunk records have their own
            encoder), a template the family does not train with, a bad
            ``max_length``, or a tokenizer that does not match the model.
    """
    family = family_for_config(model.config).name
    if family == "streamingvlm":
        raise ValueError(
            "a StreamingVLM model trains on chunk records, not LLaVA-style rows: build its dataset with "
            "flash_vstream.train.streamingvlm_collate.build_streamingvlm_dataset (flash-vstream train does)"
        )
    if family == "star":
        return StarSampleEncoder(model.config, tokenizer, template=template, max_length=max_length, sampler=sampler)
    if template not in (None, "chat_template"):
        raise ValueError(f"the Flash family trains with its chat template (template: chat_template), not {template!r}")
    from flash_vstream.inference.qwen2vl_inputs import FlashInputBuilder

    return FlashSampleEncoder(FlashInputBuilder.for_model(model, tokenizer), max_length=max_length, sampler=sampler)


class TrainDataset(Dataset):
    """Training samples encoded on access: ``dataset[i] == encoder(samples[i])``.

    Args:
        samples: the samples (e.g. ``load_mixture(...).samples``).
        encoder: from :func:`sample_encoder_for`.

    Raises:
        DataError: when a sample cannot be trained on by this encoder (checked from metadata, see the module
            docstring).
        UnusableMediaError: for a medium the family cannot read, found while estimating lengths.

    >>> dataset = TrainDataset(data.samples, sample_encoder_for(model, tokenizer, max_length=2048))  # doctest: +SKIP
    >>> dataset.lengths[:3]  # doctest: +SKIP
    [731, 742, 95]
    """

    def __init__(self, samples: Sequence[Sample], encoder: SampleEncoder):
        self.samples = list(samples)
        self.encoder = encoder
        encoder.check_all(self.samples)
        self.lengths: list[int] = estimate_lengths(self.samples, encoder.length_budget)
        """Estimated tokens of every sample, from metadata (no decoding); exact for text and features."""

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.encoder(self.samples[index])
