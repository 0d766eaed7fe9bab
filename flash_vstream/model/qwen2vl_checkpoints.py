"""Strict loading of Flash-VStream-Qwen, Qwen2-VL and Qwen2.5-VL checkpoints into the Flash family.

Layouts handled (dispatch on the checkpoint's own ``model_type`` and key names, never on its path):

- the published Flash-VStream-Qwen layout: ``model_type "flash_vstream_qwen2_vl"``,
  ``vision_config.flash_memory_config``, a flat (transformers 4.45) text config, keys in 4.45 naming
  (``visual.*``, ``model.layers.*``, ``model.embed_tokens.*``, ``model.norm.*``, ``lm_head.*``), safetensors or
  ``.bin`` (sharded or not);
- plain ``Qwen2-VL`` and ``Qwen2.5-VL`` checkpoints (``model_type "qwen2_vl"`` / ``"qwen2_5_vl"``, the same key
  naming), which get the Flash Memory defaults;
- this project's own ``save_pretrained`` output (``"flash_vstream_qwen2_vl"`` / ``"flash_vstream_qwen2_5_vl"``,
  transformers 5.x naming: ``model.visual.*``, ``model.language_model.*``).

Why an explicit key map: transformers 5.x finds its 4.x-to-5.x key renames by class name, and skips them for
classes defined outside transformers, so a Qwen-VL subclass loaded with a plain ``from_pretrained`` gets a
randomly initialised language model with only a warning. We pass the map ourselves (``key_mapping=``) and fail
on any missing, unexpected or mis-shaped key, naming them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError

from flash_vstream.memory.flash import FIDELITY_MODES, SPATIAL_METHODS
from flash_vstream.model.qwen2vl import BACKBONES, ROPE_MODES, backbone_for, flash_memory_config

FLASH_MODEL_TYPES = tuple(t for b in BACKBONES for t in (b.model_type, b.base_model_type))
"""Checkpoint ``model_type`` values :func:`load_flash_model` loads."""

# transformers 4.x (published) key -> 5.x module path, applied in order by ``from_pretrained(key_mapping=)``.
LEGACY_TO_MODULE = {
    r"^visual\.": "model.visual.",
    r"^model\.(?!visual\.|language_model\.)": "model.language_model.",
}
# 5.x module path -> 4.x key, for writing the published layout.
MODULE_TO_LEGACY = {
    r"^model\.visual\.": "visual.",
    r"^model\.language_model\.": "model.",
}

# Load-time options: name -> what it sets. See validate_flash_options.
FLASH_OPTIONS = {
    "rope_mode": f"AM-RoPE layout, one of {ROPE_MODES}",
    "spatial_method": f"DAM selection, one of {SPATIAL_METHODS}",
    "fidelity": f"Flash Memory where the published code departs from the paper, one of {FIDELITY_MODES}",
    "bank_size": "streaming: most temporal patches in the DAM feature bank, an integer >= N_CSM (default 480)",
    "bank_device": 'streaming: device of the full-resolution bank, e.g. "cpu" (default: with the features)',
}


def validate_flash_options(options: dict) -> dict:
    """The Flash family's load-time options schema; returns the checked options.

    Raises:
        ValueError: for an unknown option or a bad value, naming it and listing the valid ones.
    """
    options = dict(options)
    unknown = sorted(set(options) - set(FLASH_OPTIONS))
    if unknown:
        listing = "; ".join(f"{name}: {meaning}" for name, meaning in FLASH_OPTIONS.items())
        raise ValueError(f"unknown Flash-family option(s) {unknown}; valid options are {listing}")
    if "rope_mode" in options and options["rope_mode"] not in ROPE_MODES:
        raise ValueError(f"rope_mode must be one of {ROPE_MODES}, got {options['rope_mode']!r}")
    if "spatial_method" in options and options["spatial_method"] not in SPATIAL_METHODS:
        raise ValueError(f"spatial_method must be one of {SPATIAL_METHODS}, got {options['spatial_method']!r}")
    if "fidelity" in options and options["fidelity"] not in FIDELITY_MODES:
        raise ValueError(f"fidelity must be one of {FIDELITY_MODES}, got {options['fidelity']!r}")
    if "bank_size" in options:
        size = options["bank_size"]
        if isinstance(size, str) and size.strip().isdigit():  # from the command line (--option bank_size=960)
            size = int(size)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"bank_size must be a positive integer (>= N_CSM, default 480), got {size!r}")
        options["bank_size"] = size
    if options.get("bank_device") is not None:
        try:
            torch.device(options["bank_device"])
        except (RuntimeError, TypeError):
            raise ValueError(
                f"bank_device must name a device such as 'cpu' or 'cuda:0', got {options['bank_device']!r}"
            ) from None
        options["bank_device"] = str(options["bank_device"])
    return options


def to_published_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a model's ``state_dict`` keys to the published transformers-4.x names."""
    return {_rename(key, MODULE_TO_LEGACY): value for key, value in state.items()}


def _rename(key: str, table: dict[str, str]) -> str:
    for pattern, replacement in table.items():
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return key


def checkpoint_keys(path: Path) -> list[str]:
    """Tensor names stored in a checkpoint directory, without loading the tensors (except ``.bin``).

    Raises:
        FileNotFoundError: when the directory holds no safetensors or ``.bin`` weights.
    """
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index_name).is_file():
            return sorted(json.loads((path / index_name).read_text())["weight_map"])
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
            return sorted(handle.keys())
    if (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True)
        return sorted(state)
    raise FileNotFoundError(
        f"{path} holds no weights (model.safetensors, pytorch_model.bin or a sharded index); "
        f"is it a Qwen-VL checkpoint directory?"
    )


def uses_legacy_keys(keys: list[str]) -> bool:
    """True for transformers-4.x names (published), False for 5.x names (this project's saves).

    Raises:
        ValueError: when the keys fit neither Qwen-VL layout.
    """
    legacy = any(k.startswith("visual.") for k in keys) or any(k.startswith("model.layers.") for k in keys)
    modern = any(k.startswith(("model.visual.", "model.language_model.")) for k in keys)
    if legacy == modern:
        sample = ", ".join(keys[:5])
        raise ValueError(
            f"checkpoint keys fit neither the published Qwen-VL layout (visual.*, model.layers.*) nor the "
            f"transformers 5.x one (model.visual.*, model.language_model.*); first keys: {sample}"
        )
    return legacy


def build_config(path: Path, **options):
    """The Flash config of a checkpoint directory (Flash Memory defaults for plain Qwen-VL checkpoints).

    Args:
        path: checkpoint directory.
        **options: validated load-time options (see :func:`validate_flash_options`).

    Raises:
        ValueError: one error naming ``config.json``, the bad field and the fix: invalid JSON, another
            ``model_type``, a wrongly typed field, impossible sizes, or invalid memory settings.
    """
    config_file = path / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the checkpoint is corrupt") from None
    model_type = raw.pop("model_type", None)
    if model_type not in FLASH_MODEL_TYPES:
        raise ValueError(f"{config_file} has model_type {model_type!r}; the Flash family loads {FLASH_MODEL_TYPES}")
    backbone = backbone_for(model_type)
    for key in ("architectures", "transformers_version"):
        raw.pop(key, None)
    spatial_method = options.pop("spatial_method", None)
    if spatial_method is not None:
        vision = raw.setdefault("vision_config", {})
        memory = dict(vision.get("flash_memory_config") or {})
        vision["flash_memory_config"] = {**memory, "flash_memory_spatial_method": spatial_method}
    try:
        config = backbone.config_class(**{**raw, **options})  # validates types, sizes and memory settings
    except StrictDataclassError as err:
        raise ValueError(_describe_type_error(config_file, raw, err)) from None
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{config_file}: {err}. Fix that field in config.json (or the load option of that name)"
        ) from None
    config.vision_config.flash_memory_config = flash_memory_config(config).to_published()
    return config


def _describe_type_error(config_file: Path, raw: dict, err: StrictDataclassError) -> str:
    """One line naming the bad field (with its sub-config) and the fix."""
    message = " ".join(str(err).split())
    found = re.match(r"Validation error for field '([^']+)': (\w+): (.*)", message)
    if found is None:  # a check across fields (e.g. num_hidden_layers against layer_types)
        detail = message.split(":", 1)[-1].strip()
        return f"{config_file} is invalid: {detail}. Fix those fields in config.json"
    field, kind, detail = found.groups()
    where = field
    for sub in ("vision_config", "text_config"):
        if field not in raw and isinstance(raw.get(sub), dict) and field in raw[sub]:
            where = f"{sub}.{field}"
    problem = "has the wrong type" if kind == "TypeError" else "has an invalid value"
    return f"{config_file}: field {where!r} {problem} ({detail}); set a valid value in config.json"


def _describe_mismatch(entry) -> str:
    """``"key (checkpoint [a, b], model [c, d])"`` from transformers' ``(key, checkpoint shape, model shape)``."""
    if isinstance(entry, tuple) and len(entry) == 3:
        key, stored, expected = entry
        return f"{key} (checkpoint {list(stored)}, model {list(expected)})"
    return str(entry)


def load_flash_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **options,
):
    """Load the Flash model of a checkpoint directory strictly.

    Args:
        path: checkpoint directory (any layout of the module docstring).
        dtype: weights dtype.
        device: where to put the model.
        **options: load-time options (:func:`validate_flash_options`), e.g. ``rope_mode="reference"`` to
            evaluate released weights as published.

    Returns:
        The model (``FlashVStreamQwen2VLForConditionalGeneration`` or the Qwen2.5-VL one), in eval mode.

    Raises:
        FileNotFoundError: without weights.
        ValueError: for a bad option or ``config.json`` field, or naming every missing, unexpected or
            mis-shaped key.
    """
    path = Path(path)
    config = build_config(path, **validate_flash_options(options))
    backbone = backbone_for(config.model_type)
    key_mapping = LEGACY_TO_MODULE if uses_legacy_keys(checkpoint_keys(path)) else None
    model, info = backbone.model_class.from_pretrained(
        path,
        config=config,
        dtype=dtype,
        key_mapping=key_mapping,
        output_loading_info=True,
        ignore_mismatched_sizes=True,  # report mis-shaped keys below, with the others, instead of a RuntimeError
    )
    problems = {
        "missing": sorted(info.get("missing_keys", [])),
        "unexpected": sorted(info.get("unexpected_keys", [])),
        "mis-shaped": sorted(_describe_mismatch(k) for k in info.get("mismatched_keys", [])),
    }
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        detail = "; ".join(f"{kind} keys: {', '.join(keys)}" for kind, keys in problems.items())
        raise ValueError(
            f"checkpoint {path} does not match the {backbone.base_model_type} layout ({detail}). Rename the keys "
            f"to the published names (visual.*, model.layers.*, lm_head.*) or re-save with save_pretrained."
        )
    return model.to(device).eval()
