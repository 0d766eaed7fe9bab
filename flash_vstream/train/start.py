"""Start points of a training run: the model (with what trains set) and its tokenizer, from :class:`ModelArgs`.

Three ways in, all ending in a family model whose config declares what trains:

- ``model.start``: any folder ``load_model`` loads (a released checkpoint, a stage-1 output of this trainer, a plain
  Qwen2-VL/Qwen2.5-VL-Instruct folder, a ``make-tiny`` folder); the family is ``model.family`` when set, else
  the checkpoint's own (its ``flash_vstream_family`` marker, else its ``model_type``).
- ``model.llm`` + ``model.vision_tower``: a plain causal LM (Vicuna-7B, Qwen2, ...) and a CLIP vision tower,
  joined into a new STAR model. Its config is built here from the two folders' own configs, so nothing needs to be
  added to the LLM's ``config.json`` first; the projector and the memory are new (initialised with the seed), every
  LLM and CLIP weight is loaded, and any other missing or unexpected key is an error.
- either of them plus ``model.lora.enabled``: PEFT adapters on top (:func:`apply_lora`).

Then, in this order: the conversation template and the ``*_trainable`` flags are written into the model's config
and applied by the model's own ``apply_trainable`` (the one place requires_grad is set), and the attention
kernel is chosen with ``set_attn_implementation``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from flash_vstream.train.config import ConfigError, LoraArgs, ModelArgs

__all__ = ["FAMILY_TRAINING", "FamilyTraining", "StartPoint", "apply_lora", "build_start", "lora_config"]


@dataclass(frozen=True)
class FamilyTraining:
    """What training needs to know about a family beyond its registry record."""

    decoder_prefix: str
    """Module-name prefix of the language model's decoder layers (their linears get LoRA by default)."""
    visual_prefixes: tuple[str, ...]
    """Parameter-name prefixes of the parts a text-only sample does not reach (vision tower, memory, projector)."""
    extra_lora_targets: tuple[str, ...]
    """Further module names that get LoRA by default (the Flash merger MLP, as published)."""
    modules_to_save: tuple[str, ...]
    """Modules trained in full beside LoRA adapters by default."""
    templates: tuple[str, ...]
    """Conversation templates the family trains with."""
    max_length: int
    """The published maximum sample length (tokens), the default of ``data.max_length``."""
    apply_trainable: str | None = None
    """``"module:function"`` ``(model) -> None`` that applies the ``*_trainable`` flags, for a family built on
    transformers' own class (which has no ``apply_trainable`` method); it gives missing flags their defaults."""
    dataset_builder: str | None = None
    """``"module:function"`` ``(config, start) -> Dataset`` for a family whose data is not LLaVA-style rows."""


FAMILY_TRAINING = {
    # The abstract memory's attention is driven through its own methods, not forward, so PEFT's
    # modules_to_save wrapper would not see it: in a STAR LoRA run the memory keeps its weights.
    "star": FamilyTraining(
        decoder_prefix="language_model.model.layers.",
        visual_prefixes=("vision_tower.", "memory.", "projector."),
        extra_lora_targets=(),
        modules_to_save=("projector",),
        templates=("plain", "vicuna_v1", "chat_template"),
        max_length=2048,
    ),
    "flash": FamilyTraining(
        decoder_prefix="model.language_model.layers.",
        visual_prefixes=("model.visual.",),
        extra_lora_targets=("model.visual.merger.mlp.0", "model.visual.merger.mlp.2"),
        modules_to_save=("lm_head",),
        templates=("chat_template",),
        max_length=14000,
    ),
    # Published StreamingVLM SFT: full fine-tune of the LLM, ViT + merger frozen, chunk files of its own shape.
    "streamingvlm": FamilyTraining(
        decoder_prefix="model.language_model.layers.",
        visual_prefixes=("model.visual.",),
        extra_lora_targets=(),
        modules_to_save=("lm_head",),
        templates=("chat_template",),
        max_length=32768,
        apply_trainable="flash_vstream.train.streamingvlm_collate:apply_trainable",
        dataset_builder="flash_vstream.train.streamingvlm_collate:build_streamingvlm_dataset",
    ),
}
"""Per family (registry name): LoRA defaults, templates and the published maximum length."""


@dataclass
class StartPoint:
    """A model ready for the Trainer."""

    model: torch.nn.Module
    """The family model (a ``PeftModel`` around it with LoRA)."""
    tokenizer: object
    """Its tokenizer (with a pad token)."""
    family: str
    """The family's registry name."""


def build_start(args: ModelArgs, *, with_lora: bool = True) -> StartPoint:
    """Load or build the start model, set its template, trainable flags and attention, add LoRA.

    Args:
        args: the ``model`` branch of the config.
        with_lora: add the adapters when ``args.lora.enabled`` (off to rebuild the base for merging).

    Raises:
        FileNotFoundError: for a missing folder.
        ConfigError: for a template, flag or LoRA setting the family does not have.
        ValueError: for a checkpoint that does not load strictly.
    """
    from flash_vstream.families import FAMILY_MARKER, family_for_config

    if args.start is not None:
        model, tokenizer = _load_checkpoint(args)
    else:
        model, tokenizer = _build_from_parts(args)
    found = family_for_config(model.config, args.family, where=str(args.start or args.llm))
    family = found.name
    if model.config.model_type not in found.model_types:  # a shared model_type: the saved model says whose it is
        setattr(model.config, FAMILY_MARKER, family)
    _set_template(model, family, args.template)
    _set_trainable(model, args.trainable_overrides(), FAMILY_TRAINING[family].apply_trainable)
    if args.attn_implementation is not None:
        model.set_attn_implementation(args.attn_implementation)
    if tokenizer.pad_token is None:  # LLaMA tokenizers have none; the released model trained with pad = unk
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if with_lora and args.lora.enabled:
        model = apply_lora(model, family, args.lora)
    return StartPoint(model, tokenizer, family)


def _load_checkpoint(args: ModelArgs):
    from flash_vstream.inference.pipeline import load_model

    loaded = load_model(args.start, device="cpu", dtype=args.dtype, family=args.family, **args.options)
    return loaded.model.train(), loaded.tokenizer


def _build_from_parts(args: ModelArgs):
    """A new STAR model from a plain causal LM folder and a CLIP vision tower (config built here)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from flash_vstream.config import FlashVStreamConfig
    from flash_vstream.model.checkpoints import quiet_load_report
    from flash_vstream.model.modeling import FlashVStreamForCausalLM
    from flash_vstream.vision.clip import clip_vision_config

    dtype = getattr(torch, args.dtype)
    text = AutoConfig.from_pretrained(args.llm)
    if text.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"model.llm {args.llm} holds a {text.model_type!r} checkpoint, not a causal language model; point it at "
            "an LLM folder such as a local copy of lmsys/vicuna-7b-v1.5"
        )
    _check_clip_folder(args.vision_tower)
    vision = clip_vision_config(args.vision_tower)
    tokenizer = AutoTokenizer.from_pretrained(args.llm)
    # A chat LM (Qwen2-Instruct) brings its template; a plain LLaMA/Vicuna trains with vicuna_v1 (or plain).
    template = args.template or ("chat_template" if getattr(tokenizer, "chat_template", None) else "vicuna_v1")
    config = FlashVStreamConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        memory_config=dict(args.memory),
        projector_type=args.projector_type,
        conv_template=template,
        vision_tower_name=str(args.vision_tower),
    )
    with quiet_load_report():
        llm, llm_info = AutoModelForCausalLM.from_pretrained(args.llm, dtype=dtype, output_loading_info=True)
        clip, clip_info = CLIPVisionModel.from_pretrained(args.vision_tower, dtype=dtype, output_loading_info=True)
    for field, folder, info in (("llm", args.llm, llm_info), ("vision_tower", args.vision_tower, clip_info)):
        if info["missing_keys"]:
            raise ValueError(
                f"model.{field} {folder} lacks {len(info['missing_keys'])} weights of its model (e.g. "
                f"{sorted(info['missing_keys'])[0]}); point it at a complete "
                f"{'causal LM' if field == 'llm' else 'CLIP vision'} checkpoint folder"
            )
    state = {f"language_model.{k}": v for k, v in llm.state_dict().items()}
    state.update({f"vision_tower.clip.{k}": v for k, v in clip.state_dict().items()})
    del llm, clip
    with quiet_load_report():
        model, info = FlashVStreamForCausalLM.from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
        )
    new = ("projector.", "memory.")  # the only parts a plain LLM + CLIP lack
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(new))
    if missing or info["unexpected_keys"]:
        raise ValueError(
            f"model.llm {args.llm} + model.vision_tower {args.vision_tower} do not fill a STAR model: missing "
            f"{missing[:10]}, unexpected {sorted(info['unexpected_keys'])[:10]}; pass a causal LM folder and a CLIP "
            "vision folder"
        )
    _initialise_memory_buffers(model, info["missing_keys"])
    return model.train(), tokenizer


def _check_clip_folder(folder) -> None:
    """A local ``model.vision_tower`` folder must hold a CLIP config (transformers would read any config.json)."""
    import json
    from pathlib import Path

    config = Path(folder) / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type not in ("clip", "clip_vision_model"):
            raise ValueError(
                f"model.vision_tower {folder} holds a {model_type!r} checkpoint, not CLIP; point it at a CLIP "
                "(vision) folder such as a local copy of openai/clip-vit-large-patch14"
            )


def _initialise_memory_buffers(model, missing: list[str]) -> None:
    """Give the memory's missing buffers their defined initial values.

    ``from_pretrained`` initialises missing *parameters* (``_init_weights``) but leaves missing buffers as the
    uninitialised memory they were materialised in; the memory's load-only buffers are never trained, so they
    would be saved as garbage. A freshly built memory holds their defined values.
    """
    from flash_vstream.memory.star import StarMemory

    buffers = dict(model.named_buffers())
    keys = [k for k in missing if k in buffers and k.startswith("memory.")]
    if keys:
        fresh = StarMemory(model.config.star_memory_config()).state_dict()
        with torch.no_grad():
            for key in keys:
                buffers[key].copy_(fresh[key.removeprefix("memory.")])


def _set_template(model, family: str, template: str | None) -> None:
    if template is None:
        return
    allowed = FAMILY_TRAINING[family].templates
    if template not in allowed:
        raise ConfigError(f"model.template {template!r} is not one the {family} family trains with: {allowed}")
    if hasattr(model.config, "conv_template"):
        model.config.conv_template = template


def _set_trainable(model, flags: dict[str, bool], apply: str | None = None) -> None:
    apply = resolve_target(apply) if apply is not None else None
    if apply is not None:  # the family function gives the config its flags (defaults); overrides follow
        apply(model)
    unknown = [name for name in flags if not hasattr(model.config, name)]
    if unknown:
        own = sorted(k for k in vars(model.config) if k.endswith("_trainable"))
        raise ConfigError(
            f"model.{unknown[0]} does not apply to a {model.config.model_type} model; its flags are {own}"
        )
    for name, value in flags.items():
        setattr(model.config, name, value)
    if apply is not None:
        apply(model)
    else:
        model.apply_trainable()


def resolve_target(target: str):
    """The object a ``"package.module:attribute"`` string names (imported on use)."""
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def lora_targets(model, family: str) -> str:
    """The default LoRA target regex: every ``nn.Linear`` of the decoder layers (plus the family's extras)."""
    spec = FAMILY_TRAINING[family]
    relative = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith(spec.decoder_prefix):
            layer, _, rest = name[len(spec.decoder_prefix) :].partition(".")
            if layer.isdigit() and rest:
                relative.add(rest)
    if not relative:
        raise ConfigError(f"found no linear layers under {spec.decoder_prefix}; set model.lora.target_modules")
    decoder = re.escape(spec.decoder_prefix) + r"\d+\.(?:" + "|".join(re.escape(r) for r in sorted(relative)) + ")"
    return "|".join([decoder, *(re.escape(extra) for extra in spec.extra_lora_targets)])


def lora_config(model, family: str, lora: LoraArgs):
    """The PEFT ``LoraConfig`` of ``lora`` for ``model`` (family defaults filled in)."""
    from peft import LoraConfig

    spec = FAMILY_TRAINING[family]
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules if lora.target_modules is not None else lora_targets(model, family),
        modules_to_save=list(lora.modules_to_save if lora.modules_to_save is not None else spec.modules_to_save),
        bias="none",
    )


def apply_lora(model, family: str, lora: LoraArgs):
    """``model`` wrapped by PEFT with LoRA adapters; only adapters and ``modules_to_save`` train.

    Adapters on 16-bit layers are fp32 without DeepSpeed, and in their layer's dtype under DeepSpeed (a live
    DeepSpeed config, as ``TrainingArguments(deepspeed=...)`` sets), where every trained parameter then has one
    dtype, as ZeRO-3 requires.

    Raises:
        ImportError: when peft is not installed (``pip install peft``).
        ConfigError: when the targets match no module.
    """
    try:
        from peft import get_peft_model
    except ImportError as err:
        raise ImportError("LoRA training needs peft: pip install 'peft>=0.13'") from err
    from transformers.integrations.deepspeed import deepspeed_config

    # PEFT upcasts bf16/fp16 adapters to fp32 by default, for an optimizer that steps the parameters themselves
    # (kept without DeepSpeed). Under DeepSpeed the engine keeps fp32 master weights of everything trained, and
    # its ZeRO-3 flattens the trained partitions into one buffer of one dtype: a ZeRO-3 model is partitioned in
    # the 16-bit dtype at load and never cast again, so fp32 adapters beside the 16-bit ``modules_to_save`` copy
    # fail its start (ZeRO-1/2 would cast them down themselves). There the adapters keep their layer's dtype.
    upcast = deepspeed_config() is None
    try:
        return get_peft_model(model, lora_config(model, family, lora), autocast_adapter_dtype=upcast)
    except ValueError as err:  # peft: "Target modules ... not found in the base model"
        raise ConfigError(f"model.lora.target_modules: {err}") from None
