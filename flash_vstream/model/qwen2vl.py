"""Flash-VStream on Qwen2-VL and Qwen2.5-VL: transformers' own classes with Flash Memory before the patch merger.

One mixin serves both backbones; each backbone is a pair of two-line classes over transformers' own
``(Config, ForConditionalGeneration)``:

- the configs (:class:`FlashVStreamQwen2VLConfig`, :class:`FlashVStreamQwen2_5_VLConfig`) are transformers'
  configs plus the :class:`FlashSettings` fields (AM-RoPE layout, what trains, streaming bank). The memory
  settings live in ``vision_config.flash_memory_config`` (the six published ``flash_memory_*`` keys). Field
  types, impossible shapes and the memory settings are checked on construction, naming the field.
- the models (:class:`FlashVStreamQwen2VLForConditionalGeneration`,
  :class:`FlashVStreamQwen2_5_VLForConditionalGeneration`) run the parent's own ``__init__`` unchanged and add
  the (parameter-free) memory after it. The inner ``model`` (ViT, merger, language model) is transformers'
  own class, untouched, so the state dict is exactly the parent's.

What :class:`FlashVStreamMixin` overrides, and why:

- ``get_video_features``: the dual-resolution pass through the tower's own ``forward``
  (:func:`~flash_vstream.vision.qwen2vl.encode_dual_resolution`), Flash Memory ``[DAM; CSM]``, then the tower's
  own ``merger`` on the kept tokens;
- ``forward``: encodes the video *before* position ids are computed, because AM-RoPE ids depend on what the
  memory kept (:mod:`flash_vstream.model.qwen2vl_rope`), then hands the encoded video and the ids to the
  parent's forward (which scatters the video embeddings with its own count check, runs the LM, the loss);
- ``generate``: encodes once up front and passes the encoded video (transformers' ``mm_encoder_outputs``) and
  the AM-RoPE ids to the parent's ``generate``, which extends the ids by one per new token.

Token order, per video: DAM entries (full resolution, mass rank) then CSM centroids (half resolution, time
order); every 2x2 group of pre-merger tokens becomes one LLM token.

Shapes: B: batch, L: sequence, N: visual LLM tokens of one video, d: ViT width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration

from flash_vstream.memory.base import MemoryOutput
from flash_vstream.memory.flash import FlashMemory, FlashMemoryConfig
from flash_vstream.model.qwen2vl_rope import ROPE_MODES, MemoryLayout, batch_position_ids
from flash_vstream.vision.features import DualResFeatures
from flash_vstream.vision.qwen2vl import encode_dual_resolution

VIDEO_TOKEN_TYPE = 2
"""``mm_token_type_ids`` value of a ``<|video_pad|>`` token (0 is text, 1 an image token)."""

# vision_config.model_type -> the field holding the ViT width (the two towers name it differently).
VISION_WIDTH_FIELD = {"qwen2_vl_vision": "embed_dim", "qwen2_5_vl_vision": "hidden_size"}
# FlashSettings fields that are FlashMemoryConfig fields of the same name (the project-only memory settings).
MEMORY_FIELDS = ("fidelity", "bank_size", "bank_device")
# transformers' default M-RoPE split when a config gives none (Qwen2VLRotaryEmbedding).
DEFAULT_MROPE_SECTION = (16, 24, 24)


@dataclass
class FlashSettings:
    """What the Flash configs add to transformers' Qwen-VL configs (shared by both backbones).

    Trainability is declared here and applied in one place, :meth:`FlashVStreamMixin.apply_trainable`, when the
    model is built. The defaults are the published fine-tuning: frozen ViT, trained merger and language model
    (the published run used LoRA on the language model; PEFT adds that on top).
    """

    rope_mode: str = "paper"
    """AM-RoPE layout: "paper" (text after the video never overlaps a visual id) or "reference" (the published
    code's ids, to evaluate released weights as published); see :mod:`flash_vstream.model.qwen2vl_rope`."""

    vision_trainable: bool = False
    """Whether the ViT trains: patch embedding and blocks, not the merger."""

    merger_trainable: bool = True
    """Whether the patch merger (the vision-to-LLM projector) trains."""

    decoder_trainable: bool = True
    """Whether the language model trains: token embeddings, decoder layers, final norm and ``lm_head``."""

    fidelity: str = "paper"
    """Flash Memory where the published code departs from the paper: "paper" or "reference" (the published
    operations, to evaluate released weights as published); see :class:`FlashMemoryConfig.fidelity`."""

    bank_size: int = 480
    """Streaming only: most temporal patches in the DAM feature bank (:class:`FlashMemoryConfig.bank_size`)."""

    bank_device: str | None = None
    """Streaming only: device of the full-resolution bank, e.g. "cpu" (:class:`FlashMemoryConfig.bank_device`)."""

    def __post_init__(self, **kwargs):
        if self.rope_mode not in ROPE_MODES:
            raise ValueError(f"rope_mode must be one of {ROPE_MODES}, got {self.rope_mode!r}")
        super().__post_init__(**kwargs)
        check_architecture(self)
        flash_memory_config(self)  # validate the memory settings now, naming any bad field


@strict
class FlashVStreamQwen2VLConfig(FlashSettings, Qwen2VLConfig):
    """``Qwen2VLConfig`` plus :class:`FlashSettings`; the published Flash-VStream-Qwen ``model_type``."""

    model_type = "flash_vstream_qwen2_vl"


@strict
class FlashVStreamQwen2_5_VLConfig(FlashSettings, Qwen2_5_VLConfig):
    """``Qwen2_5_VLConfig`` plus :class:`FlashSettings` (no published checkpoint; this project's own type)."""

    model_type = "flash_vstream_qwen2_5_vl"


def flash_memory_config(config) -> FlashMemoryConfig:
    """The validated memory settings of a Flash (or plain Qwen-VL) config; published defaults when absent."""
    published = getattr(config.vision_config, "flash_memory_config", None)
    project = {name: getattr(config, name) for name in MEMORY_FIELDS if hasattr(config, name)}
    return FlashMemoryConfig.from_published(
        published, temporal_patch_size=config.vision_config.temporal_patch_size, **project
    )


def check_architecture(config) -> None:
    """Reject sizes no model can be built from, naming the field and the fix.

    Raises:
        ValueError: for a non-positive size, a head count that does not divide its width, or an M-RoPE split
            that does not cover half a text attention head.
    """
    text, vision = config.text_config, config.vision_config
    width_field = VISION_WIDTH_FIELD.get(vision.model_type)
    if width_field is None:
        raise ValueError(f"vision_config.model_type {vision.model_type!r} is not one of {sorted(VISION_WIDTH_FIELD)}")
    sizes = {
        **{name: getattr(text, name) for name in ("hidden_size", "num_attention_heads", "num_key_value_heads")},
        **{name: getattr(text, name) for name in ("num_hidden_layers", "intermediate_size", "vocab_size")},
        **{f"vision_config.{name}": getattr(vision, name) for name in ("depth", "num_heads", width_field)},
        **{f"vision_config.{name}": getattr(vision, name) for name in ("patch_size", "spatial_merge_size")},
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for part, whole in (
        ("num_attention_heads", "hidden_size"),
        ("num_key_value_heads", "num_attention_heads"),
        ("vision_config.num_heads", f"vision_config.{width_field}"),
    ):
        if sizes[whole] % sizes[part]:
            raise ValueError(
                f"{part}={sizes[part]} does not divide {whole}={sizes[whole]}; set {part} to a divisor of {whole}"
            )
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    section = list((text.rope_parameters or {}).get("mrope_section") or DEFAULT_MROPE_SECTION)
    if 2 * sum(section) != head_dim:
        raise ValueError(
            f"rope_scaling.mrope_section {section} sums to {sum(section)} but must sum to half the attention head "
            f"size (hidden_size / num_attention_heads / 2 = {head_dim // 2}); fix mrope_section"
        )


@dataclass
class FlashVideoOutput(BaseModelOutputWithPooling):
    """Encoded videos, plus the memory layouts AM-RoPE needs.

    ``pooler_output`` holds one ``(N_i, hidden)`` LLM-token tensor per video (what the parent scatters into the
    ``<|video_pad|>`` slots), ``last_hidden_state`` the pre-merger memory tokens of all videos ``(sum 4*N_i, d)``,
    and ``memory_layouts`` one :class:`MemoryLayout` per video.
    """

    memory_layouts: list[MemoryLayout] | None = None


class FlashVStreamMixin:
    """Flash Memory between the ViT and the merger of a transformers Qwen-VL ``...ForConditionalGeneration``.

    Put it first in the bases: ``class M(FlashVStreamMixin, Qwen2VLForConditionalGeneration)``. Needs a config
    with the :class:`FlashSettings` fields.
    """

    def __init__(self, config):
        super().__init__(config)
        # The memory has no parameters or buffers, so adding it after the parent's post_init changes no weights.
        self.flash_memory = FlashMemory(flash_memory_config(config), config.vision_config.spatial_merge_size)
        self.apply_trainable()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """The parent's ``from_pretrained``, then :meth:`apply_trainable` (loading replaces the parameters)."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_trainable()
        return loaded

    def apply_trainable(self) -> None:
        """Set ``requires_grad`` from the config's ``*_trainable`` fields: the one place trainability is set."""
        self.model.visual.requires_grad_(self.config.vision_trainable)
        self.model.visual.merger.requires_grad_(self.config.merger_trainable)
        self.model.language_model.requires_grad_(self.config.decoder_trainable)
        self.lm_head.requires_grad_(self.config.decoder_trainable)

    # ------------------------------------------------------------------ encoding
    def dual_resolution_features(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor
    ) -> list[DualResFeatures]:
        """Full- and half-resolution pre-merger tokens of every clip (one call of transformers' own tower)."""
        pool = self.flash_memory.config.temporal_poolsize
        # A frozen tower runs without autograd: otherwise transformers' input-gradient hook (set for gradient
        # checkpointing) makes every ViT activation require grad, and training stores and back-propagates through
        # 32 frozen ViT layers (measured on an H200: about half of a LoRA step at 11,520 tokens).
        tower_trainable = any(
            p.requires_grad for name, p in self.model.visual.named_parameters() if not name.startswith("merger.")
        )
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trainable):
            return encode_dual_resolution(self.model.visual, pixel_values_videos, video_grid_thw, pool)

    def embed_memory(self, outputs: list[MemoryOutput]) -> FlashVideoOutput:
        """The tower's merger over memory read-outs (one per video), with their AM-RoPE layouts.

        Works for ``compress`` (offline) and ``read`` (streaming) outputs alike.
        """
        merge = self.config.vision_config.spatial_merge_size
        embeds, layouts = [], []
        for out in outputs:
            embeds.append(self.model.visual.merger(out.tokens))  # (N, hidden): every merge^2 tokens -> one
            (dh, dw), (ch, cw) = out.extras["dam_grid_hw"], out.extras["csm_grid_hw"]
            layouts.append(
                MemoryLayout(
                    dam_times=out.extras["dam_times"],
                    csm_times=out.extras["csm_times"],
                    dam_grid=(dh // merge, dw // merge),
                    csm_grid=(ch // merge, cw // merge),
                )
            )
        tokens = torch.cat([out.tokens for out in outputs])
        return FlashVideoOutput(last_hidden_state=tokens, pooler_output=tuple(embeds), memory_layouts=layouts)

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.LongTensor | None = None, **kwargs
    ) -> FlashVideoOutput:
        """Dual-resolution ViT -> Flash Memory ``[DAM; CSM]`` -> patch merger, per video.

        Args:
            pixel_values_videos: ``(sum t*h*w, c*tp*p*p)`` full-resolution patches.
            video_grid_thw: ``(num_videos, 3)`` grids.
            **kwargs: accepted for signature compatibility with the parent; unused.

        Raises:
            ValueError: without ``video_grid_thw``.
        """
        if video_grid_thw is None:
            raise ValueError("video_grid_thw is required with pixel_values_videos (FlashInputBuilder returns it)")
        features = self.dual_resolution_features(pixel_values_videos, video_grid_thw)
        return self.embed_memory([self.flash_memory.compress(clip) for clip in features])

    def flash_position_ids(
        self,
        input_ids: torch.LongTensor | None,
        mm_token_type_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        video: FlashVideoOutput,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AM-RoPE ids ``(3, B, L)`` and rope deltas ``(B, 1)`` of a prompt holding the encoded videos.

        ``mm_token_type_ids`` may be omitted: the video runs are then the ``<|video_pad|>`` tokens of ``input_ids``.

        Raises:
            ValueError: without ``input_ids`` and ``mm_token_type_ids``, or when the runs don't match the videos.
        """
        if mm_token_type_ids is None:
            if input_ids is None:
                raise ValueError("a video prompt needs input_ids (or mm_token_type_ids) to place its AM-RoPE ids")
            mm_token_type_ids = (input_ids == self.config.video_token_id).long() * VIDEO_TOKEN_TYPE
        return batch_position_ids(mm_token_type_ids, video.memory_layouts, attention_mask, self.config.rope_mode)

    def _encoded_video(self, pixel_values_videos, video_grid_thw, mm_encoder_outputs) -> FlashVideoOutput | None:
        """The video of this call: encoded now from pixels, or given pre-encoded; ``None`` for text only."""
        given = (mm_encoder_outputs or {}).get("video")
        if pixel_values_videos is None:
            if given is not None and getattr(given, "memory_layouts", None) is None:
                raise ValueError(
                    "mm_encoder_outputs['video'] must come from this model's get_video_features (it carries the "
                    "memory layouts AM-RoPE needs)"
                )
            return given
        if given is not None:
            raise ValueError("pass either pixel_values_videos or mm_encoder_outputs['video'], not both")
        return self.get_video_features(pixel_values_videos, video_grid_thw)

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """The parent's forward, with the video encoded first so that its AM-RoPE ids can be computed.

        ``labels`` is named (not left in ``**kwargs``) so the HF Trainer finds the label column in the signature.

        On a prefill (empty or no cache) the rope deltas are stored where the parent keeps them
        (``model.rope_deltas``), so a later cached call without ``position_ids`` continues at the right ids.

        Raises:
            ValueError: for image inputs, or a video without the inputs its ids need.
        """
        if pixel_values is not None or image_grid_thw is not None:
            raise ValueError("Flash-VStream takes videos only; pass frames as a video (FlashInputBuilder)")
        video = self._encoded_video(pixel_values_videos, video_grid_thw, mm_encoder_outputs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if position_ids is None and (cache is None or cache.get_seq_length() == 0):
            deltas = None
            if video is not None:
                position_ids, deltas = self.flash_position_ids(input_ids, mm_token_type_ids, attention_mask, video)
            self.model.rope_deltas = deltas  # no stale deltas from an earlier prompt
        if video is not None:
            mm_encoder_outputs = {**(mm_encoder_outputs or {}), "video": video}
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm_encoder_outputs or None,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def generate(self, *args, pixel_values_videos=None, video_grid_thw=None, mm_encoder_outputs=None, **kwargs):
        """``generate`` with the video encoded once up front and its AM-RoPE ids passed as ``position_ids``.

        transformers extends the given ids by one per generated token on every axis, which is where both
        AM-RoPE layouts continue (the prompt ends on text).
        """
        with torch.no_grad():
            video = self._encoded_video(pixel_values_videos, video_grid_thw, mm_encoder_outputs)
        if video is not None:
            if kwargs.get("position_ids") is None:
                input_ids = kwargs.get("input_ids", args[0] if args else None)
                kwargs["position_ids"], _ = self.flash_position_ids(
                    input_ids, kwargs.get("mm_token_type_ids"), kwargs.get("attention_mask"), video
                )
            mm_encoder_outputs = {**(mm_encoder_outputs or {}), "video": video}
        if mm_encoder_outputs:
            kwargs["mm_encoder_outputs"] = mm_encoder_outputs
        return super().generate(*args, **kwargs)


class FlashVStreamQwen2VLForConditionalGeneration(FlashVStreamMixin, Qwen2VLForConditionalGeneration):
    """Flash-VStream on transformers' ``Qwen2VLForConditionalGeneration`` (the published Flash-VStream-Qwen).

    >>> from flash_vstream.model.tiny_qwen2vl import tiny_flash_config   # doctest: +SKIP
    >>> model = FlashVStreamQwen2VLForConditionalGeneration(tiny_flash_config())  # doctest: +SKIP
    """

    config_class = FlashVStreamQwen2VLConfig


class FlashVStreamQwen2_5_VLForConditionalGeneration(FlashVStreamMixin, Qwen2_5_VLForConditionalGeneration):
    """Flash-VStream on transformers' ``Qwen2_5_VLForConditionalGeneration`` (windowed-attention ViT).

    >>> from flash_vstream.model.tiny_qwen2vl import tiny_flash_config   # doctest: +SKIP
    >>> config = tiny_flash_config(variant="flash-qwen2_5vl")  # doctest: +SKIP
    >>> model = FlashVStreamQwen2_5_VLForConditionalGeneration(config)  # doctest: +SKIP
    """

    config_class = FlashVStreamQwen2_5_VLConfig


@dataclass(frozen=True)
class FlashBackbone:
    """One Qwen-VL backbone the Flash family runs on.

    Attributes:
        base_model_type: the plain checkpoint's ``model_type`` (loaded with Flash Memory defaults).
        model_type: the Flash checkpoint's own ``model_type``.
        config_class: the Flash config class.
        model_class: the Flash model class.
    """

    base_model_type: str
    model_type: str
    config_class: type
    model_class: type


BACKBONES = (
    FlashBackbone(
        "qwen2_vl", "flash_vstream_qwen2_vl", FlashVStreamQwen2VLConfig, FlashVStreamQwen2VLForConditionalGeneration
    ),
    FlashBackbone(
        "qwen2_5_vl",
        "flash_vstream_qwen2_5_vl",
        FlashVStreamQwen2_5_VLConfig,
        FlashVStreamQwen2_5_VLForConditionalGeneration,
    ),
)


def backbone_for(model_type: str) -> FlashBackbone:
    """The backbone of a checkpoint ``model_type`` (plain or Flash).

    Raises:
        ValueError: for another ``model_type``, listing the supported ones.
    """
    for backbone in BACKBONES:
        if model_type in (backbone.base_model_type, backbone.model_type):
            return backbone
    known = [t for b in BACKBONES for t in (b.model_type, b.base_model_type)]
    raise ValueError(f"model_type {model_type!r} is not a Flash-family type; the Flash family loads {known}")
