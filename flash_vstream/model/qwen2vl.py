"""Flash-VStream on Qwen2-VL: transformers' Qwen2-VL with Flash Memory between the ViT and the patch merger.

The smallest overrides of transformers' own classes (reference ``flash-vstream.md`` §7-§8):

- :class:`FlashVStreamQwen2VLConfig` is a ``Qwen2VLConfig`` with ``model_type="flash_vstream_qwen2_vl"``; the
  memory settings live in ``vision_config.flash_memory_config`` (the published six keys) and the AM-RoPE
  layout in ``rope_mode``, both validated on construction.
- :class:`FlashQwen2VLModel` (a ``Qwen2VLModel``) uses :class:`~flash_vstream.vision.qwen2vl.FlashVisionTower`
  (the same parameters) and overrides ``get_video_features`` (dual-resolution ViT -> Flash Memory -> merger),
  ``get_rope_index`` (AM-RoPE ids from the memory's own times) and ``forward`` (encode the video before the
  position ids, because AM-RoPE ids depend on what the memory kept).
- :class:`FlashVStreamQwen2VLForConditionalGeneration` swaps in that model and overrides ``generate`` to encode
  the video first and hand it on through transformers' own ``mm_encoder_outputs`` path, so the ViT runs once.

Everything else (text model, scatter of the video embeddings with its count check, loss, caching) is the
parent's. Key names are the parent's, so Qwen2-VL checkpoints load through the standard key map
(see :mod:`flash_vstream.model.qwen2vl_checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import Qwen2VLConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VLForConditionalGeneration,
    Qwen2VLModel,
    Qwen2VLPreTrainedModel,
    Qwen2VLTextModel,
)

from flash_vstream.memory.flash import FlashMemory, FlashMemoryConfig
from flash_vstream.model.qwen2vl_rope import ROPE_MODES, MemoryLayout, batch_position_ids
from flash_vstream.vision.qwen2vl import FlashVisionTower


@strict
class FlashVStreamQwen2VLConfig(Qwen2VLConfig):
    """``Qwen2VLConfig`` plus Flash Memory.

    The memory settings live in ``vision_config.flash_memory_config``, a dict of the six published
    ``flash_memory_*`` keys (:meth:`FlashMemoryConfig.from_published`; missing keys take the published
    defaults), so the published layout round-trips.
    """

    model_type = "flash_vstream_qwen2_vl"

    rope_mode: str = "paper"
    """AM-RoPE layout: "paper" (text after the video never overlaps a visual id) or "reference" (the published
    code's ids, to evaluate released weights as published); see :mod:`flash_vstream.model.qwen2vl_rope`."""

    def __post_init__(self, **kwargs):
        if self.rope_mode not in ROPE_MODES:
            raise ValueError(f"config.rope_mode must be one of {ROPE_MODES}, got {self.rope_mode!r}")
        super().__post_init__(**kwargs)
        flash_memory_config(self)  # validate the memory settings now, naming any bad field


def flash_memory_config(config: Qwen2VLConfig) -> FlashMemoryConfig:
    """The validated memory settings of a (Flash or plain) Qwen2-VL config; defaults when absent."""
    published = getattr(config.vision_config, "flash_memory_config", None)
    return FlashMemoryConfig.from_published(published, temporal_patch_size=config.vision_config.temporal_patch_size)


@dataclass
class FlashVideoOutput(BaseModelOutputWithPooling):
    """Encoded videos, plus the memory layouts AM-RoPE needs.

    ``pooler_output`` holds one ``(n_i, hidden)`` LLM-token tensor per video (what the parent scatters into the
    ``<|video_pad|>`` slots), ``last_hidden_state`` the pre-merger memory tokens of all videos, and
    ``memory_layouts`` one :class:`MemoryLayout` per video.
    """

    memory_layouts: list[MemoryLayout] | None = None


class FlashQwen2VLModel(Qwen2VLModel):
    """``Qwen2VLModel`` whose video path runs through Flash Memory and whose video ids follow AM-RoPE."""

    def __init__(self, config: Qwen2VLConfig):
        # The parent's __init__ with the vision tower swapped for its subclass (same parameters and names).
        Qwen2VLPreTrainedModel.__init__(self, config)
        self.visual = FlashVisionTower._from_config(config.vision_config)
        self.language_model = Qwen2VLTextModel._from_config(config.text_config)
        self.flash_memory = FlashMemory(flash_memory_config(config), config.vision_config.spatial_merge_size)
        self.rope_deltas = None
        self.post_init()

    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.LongTensor | None = None, **kwargs
    ) -> FlashVideoOutput:
        """Dual-resolution ViT -> Flash Memory ``[DAM; CSM]`` -> patch merger, per video.

        Args:
            pixel_values_videos: ``(sum t*h*w, c*tp*p*p)`` full-resolution patches.
            video_grid_thw: ``(num_videos, 3)`` grids.
            **kwargs: accepted for signature compatibility with the parent; unused.

        Returns:
            A :class:`FlashVideoOutput`.
        """
        if video_grid_thw is None:
            raise ValueError("video_grid_thw is required with pixel_values_videos (FlashInputBuilder returns it)")
        pool = self.flash_memory.config.temporal_poolsize
        merge = self.visual.spatial_merge_size
        features = self.visual.forward_dual_resolution(pixel_values_videos, video_grid_thw, pool)
        memory_tokens, embeds, layouts = [], [], []
        for clip in features:
            out = self.flash_memory.compress(clip)
            memory_tokens.append(out.tokens)
            embeds.append(self.visual.merger(out.tokens))  # (N/merge^2, hidden)
            (dh, dw), (ch, cw) = out.extras["dam_grid_hw"], out.extras["csm_grid_hw"]
            layouts.append(
                MemoryLayout(
                    dam_times=out.extras["dam_times"],
                    csm_times=out.extras["csm_times"],
                    dam_grid=(dh // merge, dw // merge),
                    csm_grid=(ch // merge, cw // merge),
                )
            )
        return FlashVideoOutput(
            last_hidden_state=torch.cat(memory_tokens), pooler_output=tuple(embeds), memory_layouts=layouts
        )

    def get_rope_index(
        self,
        input_ids: torch.LongTensor,
        mm_token_type_ids: torch.IntTensor,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AM-RoPE ids ``(3, B, L)`` and rope deltas ``(B, 1)``; the layouts come from the encoded videos.

        Raises:
            ValueError: for image inputs, or when the videos were not encoded first.
        """
        if image_grid_thw is not None:
            raise ValueError("Flash-VStream on Qwen2-VL takes videos only; pass frames as a video")
        video = (mm_encoder_outputs or {}).get("video")
        layouts = getattr(video, "memory_layouts", None)
        if layouts is None:
            raise ValueError(
                "AM-RoPE ids depend on what Flash Memory kept: encode the video first with get_video_features "
                "and pass its output as mm_encoder_outputs={'video': ...}"
            )
        mode = getattr(self.config, "rope_mode", "paper")
        return batch_position_ids(mm_token_type_ids, layouts, attention_mask, mode)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        **kwargs,
    ):
        """The parent's forward, with the video encoded first so its AM-RoPE ids can be computed."""
        if pixel_values is not None:
            raise ValueError("Flash-VStream on Qwen2-VL takes videos only; pass frames as a video")
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if pixel_values_videos is not None:
            if mm_encoder_outputs.get("video") is not None:
                raise ValueError("pass either pixel_values_videos or mm_encoder_outputs['video'], not both")
            mm_encoder_outputs["video"] = self.get_video_features(pixel_values_videos, video_grid_thw)
        prefill = past_key_values is None or past_key_values.get_seq_length() == 0
        if position_ids is None and mm_encoder_outputs.get("video") is not None and prefill:
            if input_ids is None or mm_token_type_ids is None:
                raise ValueError("a video forward needs input_ids and mm_token_type_ids (0 text, 2 video)")
            position_ids, self.rope_deltas = self.get_rope_index(
                input_ids, mm_token_type_ids, attention_mask=attention_mask, mm_encoder_outputs=mm_encoder_outputs
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm_encoder_outputs or None,
            **kwargs,
        )


class FlashVStreamQwen2VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """``Qwen2VLForConditionalGeneration`` built on :class:`FlashQwen2VLModel`.

    >>> from flash_vstream.model.tiny_qwen2vl import tiny_flash_config   # doctest: +SKIP
    >>> model = FlashVStreamQwen2VLForConditionalGeneration(tiny_flash_config())  # doctest: +SKIP
    """

    config_class = FlashVStreamQwen2VLConfig

    def __init__(self, config: Qwen2VLConfig):
        # The parent's __init__ with the base model swapped (same submodule names, so the same keys).
        Qwen2VLPreTrainedModel.__init__(self, config)
        self.model = FlashQwen2VLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def flash_memory(self) -> FlashMemory:
        return self.model.flash_memory

    def generate(self, *args, pixel_values_videos=None, video_grid_thw=None, mm_encoder_outputs=None, **kwargs):
        """``generate`` with the video encoded once up front (AM-RoPE ids need the memory's output).

        The encoded video goes through transformers' ``mm_encoder_outputs`` path; ``video_grid_thw`` is passed
        on so generation computes 3-D position ids (through :meth:`FlashQwen2VLModel.get_rope_index`).
        """
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if pixel_values_videos is not None:
            if mm_encoder_outputs.get("video") is not None:
                raise ValueError("pass either pixel_values_videos or mm_encoder_outputs['video'], not both")
            with torch.no_grad():
                mm_encoder_outputs["video"] = self.model.get_video_features(pixel_values_videos, video_grid_thw)
        if mm_encoder_outputs.get("video") is not None and (
            video_grid_thw is None or kwargs.get("mm_token_type_ids") is None
        ):
            # Without both, transformers silently falls back to 1-D text positions for the whole prompt.
            raise ValueError(
                "generate with a video needs video_grid_thw and mm_token_type_ids (FlashInputBuilder returns both)"
            )
        if mm_encoder_outputs:
            kwargs["mm_encoder_outputs"] = mm_encoder_outputs
        return super().generate(*args, video_grid_thw=video_grid_thw, **kwargs)
