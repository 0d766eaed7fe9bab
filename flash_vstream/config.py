"""Hugging Face configs of the STAR family, and conversion of the released flat config.

- :class:`FlashVStreamConfig` (``model_type="flash_vstream"``) is this project's own composite format: a
  ``text_config`` (any causal LM), a ``vision_config`` (CLIP vision), a ``memory_config`` (the fields of
  :class:`flash_vstream.memory.star.StarMemoryConfig`) and the projector/prompt settings.
- :class:`VStreamLegacyConfig` (``model_type="vstream"``) reads the released ``IVGSZ/Flash-VStream-7b`` config: a flat
  LLaMA config with ``mm_*``/``compress_*``/``video_*`` fields. :func:`config_from_legacy` turns it into a
  :class:`FlashVStreamConfig`.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlamaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

CONV_TEMPLATES = ("vicuna_v1", "plain", "chat_template")
ASPECT_MODES = ("pad", "crop")
# The STAR memory pools a square grid of patch tokens, so the CLS token is always dropped (as released).
FEATURE_SELECTS = ("patch",)

# Released-config field -> StarMemoryConfig field. The released checkpoint's name encodes the same numbers:
# "weighted_kmeans1*8-25*4-25*1" = N_spa*P_spa - N_tem*P_tem - N_abs*P_abs.
_LEGACY_MEMORY_FIELDS = {
    "compress_size": "spatial_size",
    "compress_long_memory_size": "temporal_size",
    "compress_Turing_memory_size": "abstract_size",
    "compress_Turing_update_ratio": "update_ratio",
    "compress_Turing_hidden_dim": "attention_dim",
    "video_current_memory_length": "spatial_frames",
    "video_long_memory_length": "temporal_clusters",
    "video_Turing_memory_length": "abstract_slots",
}
# Fields of the released config that only described training or the old code base; they have no effect here.
_LEGACY_IGNORED_PREFIXES = ("mm_", "compress_", "video_", "tune_", "freeze_", "tokenizer_", "use_mm_proj")


@strict
class FlashVStreamConfig(PreTrainedConfig):
    """Config of a STAR-family model: CLIP vision tower + STAR memory + projector + any causal LM.

    Args:
        vision_config: CLIP vision config (defaults: CLIP ViT-L/14 at 224 px).
        text_config: config of the language model (any ``AutoModelForCausalLM`` type; default LLaMA).
        memory_config: fields of ``StarMemoryConfig`` (``None`` = its defaults: 681 tokens).
        projector_type: ``"linear"``, ``"mlp<N>x_gelu"`` or ``"identity"``.
        vision_feature_layer: hidden layer of the vision tower whose features feed the memory (-2 as released).
        vision_feature_select: ``"patch"``: CLS dropped (as released); the memory pools a square patch grid.
        image_aspect_ratio: ``"pad"`` pads frames to a square with the mean colour before the CLIP transform (as
            released), ``"crop"`` resizes the short side and centre-crops.
        image_token_id: placeholder id of visual tokens in ``input_ids``; -200 lies outside every vocabulary, so the
            tokenizer needs no new token (as released).
        conv_template: ``"vicuna_v1"`` and ``"plain"`` (the released model's stage-2 and stage-1 templates) or
            ``"chat_template"`` (the tokenizer's own, for Qwen2-type decoders).
        vision_tower_name: where the CLIP weights came from (informational; used when a checkpoint lacks them).
        vision_trainable: train the CLIP layers that feed the memory (off in both published recipes).
        memory_trainable: train the abstract memory's semantic attention (``q_proj``/``k_proj``).
        projector_trainable: train the projector.
        decoder_trainable: train the language model (off in stage 1 of the published recipe).

    The four ``*_trainable`` flags are the one place that decides what is trained
    (``FlashVStreamForCausalLM.apply_trainable`` applies them); parameters that never receive a gradient are never
    trainable, so DDP needs no ``find_unused_parameters``.
    """

    model_type = "flash_vstream"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 224,
                "projection_dim": 768,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    memory_config: dict | None = None
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select: str = "patch"
    image_aspect_ratio: str = "pad"
    image_token_id: int = -200
    conv_template: str = "vicuna_v1"
    vision_tower_name: str | None = "openai/clip-vit-large-patch14"
    tie_word_embeddings: bool = False
    vision_trainable: bool = False
    memory_trainable: bool = True
    projector_trainable: bool = True
    decoder_trainable: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.conv_template not in CONV_TEMPLATES:
            raise ValueError(f"conv_template must be one of {CONV_TEMPLATES}, got {self.conv_template!r}")
        if self.image_aspect_ratio not in ASPECT_MODES:
            raise ValueError(f"image_aspect_ratio must be one of {ASPECT_MODES}, got {self.image_aspect_ratio!r}")
        if self.vision_feature_select not in FEATURE_SELECTS:
            raise ValueError(
                f"vision_feature_select must be 'patch' (the STAR memory pools a square grid of patch tokens, so the "
                f"CLS token cannot be kept), got {self.vision_feature_select!r}"
            )
        if not re.fullmatch(r"linear|identity|mlp\d+x_gelu", self.projector_type):
            raise ValueError(f"projector_type must be linear, identity or mlp<N>x_gelu, got {self.projector_type!r}")
        if self.memory_config is None:
            self.memory_config = {}

    def star_memory_config(self):
        """The validated ``StarMemoryConfig``, with the feature grid and width taken from the vision tower."""
        from flash_vstream.memory.star import StarMemoryConfig

        vision = self.vision_config
        grid = vision.image_size // vision.patch_size
        fields = {"feature_grid": grid, "feature_dim": vision.hidden_size, **self.memory_config}
        return StarMemoryConfig.from_dict(fields)


@strict
class VStreamLegacyConfig(LlamaConfig):
    """The released Flash-VStream-7b ``config.json``: a flat LLaMA config plus ``mm_*``/``compress_*`` fields.

    Registered under ``model_type="vstream"`` so ``AutoConfig`` can read released checkpoints; convert it with
    :func:`config_from_legacy` before building a model.
    """

    model_type = "vstream"


def config_from_legacy(legacy: PreTrainedConfig, checkpoint_dir: str | Path | None = None) -> FlashVStreamConfig:
    """Convert a released flat ``vstream`` config into a :class:`FlashVStreamConfig`.

    The CLIP config comes from ``mm_vision_tower``: a directory (relative paths resolve against
    ``checkpoint_dir``), a known public id, or the Hub.

    Raises:
        ValueError: when a field the conversion needs is missing, naming it.
    """
    from flash_vstream.vision.clip import clip_vision_config

    flat = legacy.to_dict()
    for required in ("mm_vision_tower", "mm_hidden_size"):
        if required not in flat:
            raise ValueError(
                f"released-layout config lacks '{required}'; a Flash-VStream-7b config.json has it "
                "(add it, e.g. mm_vision_tower='openai/clip-vit-large-patch14', mm_hidden_size=1024)"
            )
    memory = {ours: flat[theirs] for theirs, ours in _LEGACY_MEMORY_FIELDS.items() if theirs in flat}
    text = {
        key: value
        for key, value in flat.items()
        if not key.startswith(_LEGACY_IGNORED_PREFIXES)
        and key not in ("model_type", "architectures", "image_aspect_ratio", "_name_or_path", "transformers_version")
    }
    text["model_type"] = "llama"
    tower = flat["mm_vision_tower"]
    if checkpoint_dir is not None and (Path(checkpoint_dir) / tower).is_dir():
        tower = str(Path(checkpoint_dir) / tower)
    vision = clip_vision_config(tower)
    if vision.hidden_size != flat["mm_hidden_size"]:
        raise ValueError(
            f"mm_hidden_size={flat['mm_hidden_size']} does not match the width {vision.hidden_size} of "
            f"mm_vision_tower={flat['mm_vision_tower']!r}"
        )
    return FlashVStreamConfig(
        vision_config=vision.to_dict(),
        text_config=text,
        memory_config=memory,
        projector_type=flat.get("mm_projector_type", "mlp2x_gelu"),
        vision_feature_layer=flat.get("mm_vision_select_layer", -2),
        vision_feature_select=flat.get("mm_vision_select_feature", "patch"),
        image_aspect_ratio="pad" if flat.get("image_aspect_ratio", "pad") == "pad" else "crop",
        conv_template="vicuna_v1",
        vision_tower_name=tower,
    )
