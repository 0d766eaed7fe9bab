"""``FlashVStreamForCausalLM``: the STAR family as one Hugging Face ``PreTrainedModel``.

Composition, not subclassing per backbone: a frozen CLIP ``vision_tower`` → the STAR ``memory`` (681 tokens with
the released settings) → a ``projector`` → any causal LM built with ``AutoModelForCausalLM.from_config``
(LLaMA/Vicuna, Qwen2, ...). Visual tokens go into the prompt at placeholder ids through one splice helper.

Shapes: b batch, t frames, n tokens per frame (256 for CLIP-L/14 @224), d vision width, m memory tokens,
h text hidden size, l prompt length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from flash_vstream.config import FlashVStreamConfig
from flash_vstream.memory.base import MemoryOutput
from flash_vstream.memory.star import StarMemory
from flash_vstream.model.projector import build_projector
from flash_vstream.model.splice import embed_with_visual_tokens
from flash_vstream.vision.clip import CLIPVisionEncoder


class FlashVStreamPreTrainedModel(PreTrainedModel):
    config_class = FlashVStreamConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["CLIPEncoderLayer", "LlamaDecoderLayer", "Qwen2DecoderLayer"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then the config's trainable flags again.

        transformers materialises the weights after ``__init__`` as new parameters (all ``requires_grad``), which
        would silently undo the flags set at construction.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.apply_trainable()
        return loaded


class FlashVStreamForCausalLM(FlashVStreamPreTrainedModel):
    """CLIP + STAR memory + projector + causal LM.

    Args:
        config: a :class:`FlashVStreamConfig`.

    >>> from flash_vstream.model.tiny import tiny_star_config
    >>> model = FlashVStreamForCausalLM(tiny_star_config("llama"))
    >>> model.memory.num_tokens(60)
    681
    """

    def __init__(self, config: FlashVStreamConfig):
        super().__init__(config)
        self.vision_tower = CLIPVisionEncoder(
            config.vision_config,
            select_layer=config.vision_feature_layer,
            select_feature=config.vision_feature_select,
            trainable=config.vision_trainable,
        )
        self.memory = StarMemory(config.star_memory_config())
        self.projector = build_projector(
            config.projector_type, config.vision_config.hidden_size, config.text_config.hidden_size
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()
        self.apply_trainable()

    def apply_trainable(self) -> None:
        """Set ``requires_grad`` from the config's ``*_trainable`` flags: the one place that decides it.

        The vision tower applies its own flag (only the layers that feed the memory can be trained); the memory
        exposes only parameters its algorithm uses.
        """
        config = self.config
        self.vision_tower.set_trainable(config.vision_trainable)
        self.memory.requires_grad_(config.memory_trainable)
        self.projector.requires_grad_(config.projector_trainable)
        self.language_model.requires_grad_(config.decoder_trainable)

    # --- embeddings -------------------------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    # --- visual path ------------------------------------------------------------------------------------------
    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(t, 3, H, W)`` preprocessed frames -> ``(t, n, d)`` frozen CLIP features."""
        return self.vision_tower(pixel_values)

    def project_memory(self, memory: MemoryOutput) -> torch.Tensor:
        """``(m, d)`` memory tokens -> ``(m, h)`` language-model embeddings."""
        return self.projector(memory.tokens.to(self.projector_dtype))

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.language_model.parameters()).dtype

    def visual_tokens(
        self,
        pixel_values: Sequence[torch.Tensor] | None = None,
        features: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Compress each video with the memory and project it; all samples concatenated in batch order.

        Args:
            pixel_values: per sample ``(t_i, 3, H, W)`` preprocessed frames (a 5-D tensor counts as a list).
            features: per sample ``(t_i, n, d)`` pre-extracted CLIP features (the released training data format),
                on any device and in any float dtype: they are moved to the memory's.

        Returns:
            ``(sum_i m_i, h)`` projected visual tokens.
        """
        if features is None:
            features = [self.encode_frames(frames) for frames in pixel_values]
        weight = next(self.memory.parameters())  # features go to the memory's device and dtype
        tokens = [
            self.project_memory(self.memory.compress(feats.to(device=weight.device, dtype=weight.dtype)))
            for feats in features
        ]
        return torch.cat(tokens, dim=0)

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: Sequence[torch.Tensor] | None = None,
        features: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Text embeddings with the visual tokens spliced in at ``config.image_token_id`` -> ``(b, l, h)``."""
        embedding = self.get_input_embeddings()
        if pixel_values is None and features is None:
            if (input_ids == self.config.image_token_id).any():
                raise ValueError("input_ids hold visual placeholders but neither pixel_values nor features was given")
            return embedding(input_ids)
        visual = self.visual_tokens(pixel_values=pixel_values, features=features)
        return embed_with_visual_tokens(embedding, input_ids, self.config.image_token_id, visual)

    # --- HF entry points --------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """Save in this project's own format (``model_type: "flash_vstream"``, our module names).

        transformers would otherwise undo the key mapping a model was loaded with and write, e.g., released-layout
        names under our config; ``save_original_format=True`` restores that behaviour.
        """
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: Sequence[torch.Tensor] | None = None,
        features: Sequence[torch.Tensor] | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward; with ``labels`` the loss covers the supervised (assistant) tokens only.

        Labels are -100 at prompt and visual-placeholder positions (the prompt builders do this), so the
        language model's shifted cross-entropy sees only assistant tokens. ``cache`` is the language model's KV
        cache (transformers 5.x renamed ``past_key_values`` to ``cache``; the old name still arrives in ``kwargs``).
        """
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values=pixel_values, features=features)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: Sequence[torch.Tensor] | None = None,
        features: Sequence[torch.Tensor] | None = None,
        **generation,
    ) -> torch.Tensor:
        """Generate from a prompt with visual placeholders; returns only the new tokens ``(b, new)``."""
        inputs_embeds = self.embed_inputs(input_ids, pixel_values=pixel_values, features=features)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation)
