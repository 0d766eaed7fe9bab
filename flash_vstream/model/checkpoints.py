"""Strict loading of STAR-family checkpoints: the released Flash-VStream-7b layout and this project's own format.

Released layout (``model_type: "vstream"``, flat LLaMA config, sharded ``.bin`` or safetensors) keys map onto this
project's module tree through one explicit table (:data:`RELEASED_KEY_MAP`). Loading fails on any missing or
unexpected key and names them. The only keys dropped on purpose are listed in :data:`DERIVED_KEYS` (buffers that old
transformers versions saved but that are recomputed from the config).

The project's own format is what ``save_pretrained`` writes (``model_type: "flash_vstream"``); it reloads
bit-identically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

import torch

from flash_vstream.config import FlashVStreamConfig, VStreamLegacyConfig, config_from_legacy

# (released prefix, our prefix). Prefix rules only: transformers' ``key_mapping`` applies them while it streams the
# shards, each released key matches at most one rule, and the inverse (for writing the layout) is exact.
RELEASED_PREFIXES: list[tuple[str, str]] = [
    # transformers 5.x CLIPVisionModel has no ``vision_model`` level: its keys start at ``embeddings.``/``encoder.``.
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower.clip."),
    ("model.mm_projector.", "projector."),
    ("model.attention_model.", "memory.attention."),
    ("model.layers.", "language_model.model.layers."),
    ("model.embed_tokens.", "language_model.model.embed_tokens."),
    ("model.norm.", "language_model.model.norm."),
    ("lm_head.", "language_model.lm_head."),
]
RELEASED_KEY_MAP: dict[str, str] = {"^" + re.escape(theirs): ours for theirs, ours in RELEASED_PREFIXES}
# Saved by transformers 4.31-era LLaMA but derived from the config (rotary frequencies): never weights.
DERIVED_KEYS = re.compile(r"\.rotary_emb\.inv_freq$")
VISION_PREFIX = "vision_tower.clip."


class CheckpointLayoutError(ValueError):
    """A checkpoint's keys don't match the layout its config declares."""


def map_released_key(key: str) -> str:
    """Our parameter name for a released-layout key (unchanged when no rule matches, so it shows as unexpected)."""
    return _swap_prefix(key, [(theirs, ours) for theirs, ours in RELEASED_PREFIXES])


def to_released_key(key: str) -> str:
    """The released-layout name of one of our parameters (inverse of :func:`map_released_key`)."""
    return _swap_prefix(key, [(ours, theirs) for theirs, ours in RELEASED_PREFIXES])


def _swap_prefix(key: str, rules: list[tuple[str, str]]) -> str:
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _strict_load(config: FlashVStreamConfig, path: Path, dtype: torch.dtype, key_mapping: dict | None):
    """``from_pretrained`` with every missing/unexpected key turned into an error (CLIP may come separately)."""
    from flash_vstream.model.modeling import FlashVStreamForCausalLM

    try:
        with quiet_load_report():
            model, info = FlashVStreamForCausalLM.from_pretrained(
                path, config=config, dtype=dtype, key_mapping=key_mapping, output_loading_info=True
            )
    except RuntimeError as err:  # transformers raises RuntimeError on shape mismatches
        raise CheckpointLayoutError(f"checkpoint {path} has tensors of the wrong shape for its config: {err}") from err
    missing, unexpected = set(info["missing_keys"]), set(info["unexpected_keys"])
    unexpected = {k for k in unexpected if not DERIVED_KEYS.search(k)}
    # The whole tower absent means "take CLIP from mm_vision_tower"; a partial tower is a broken checkpoint.
    clip_missing = missing == {k for k in model.state_dict() if k.startswith(VISION_PREFIX)}
    if clip_missing and not unexpected:
        _load_clip_from_tower(model, config)
    elif missing or unexpected:
        if key_mapping is not None:  # name unexpected keys as they are stored in the checkpoint
            unexpected = {to_released_key(k) for k in unexpected}
        raise CheckpointLayoutError(_describe_mismatch(path, missing, unexpected))
    return model.eval()


@contextlib.contextmanager
def quiet_load_report():
    """Drop transformers' load-report warning while our strict load runs.

    We raise a clearer error instead. A filter, not a level change: the logger's level gates other checks.
    """
    report_logger = logging.getLogger("transformers.modeling_utils")

    def not_a_load_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    report_logger.addFilter(not_a_load_report)
    try:
        yield
    finally:
        report_logger.removeFilter(not_a_load_report)


def key_mismatch_message(header: str, groups: dict[str, set[str] | list[str]], fix: str) -> str:
    """A strict-loading error: ``header``, each non-empty group of names (count, first 20, sorted), ``fix``."""
    lines = [header]
    for label, names in groups.items():
        if names:
            lines.append(f"  {label} ({len(names)}): {', '.join(sorted(names)[:20])}")
    lines.append(fix)
    return "\n".join(lines)


def _describe_mismatch(path: Path, missing: set[str], unexpected: set[str]) -> str:
    return key_mismatch_message(
        f"checkpoint {path} does not match the model its config declares:",
        {"missing keys": missing, "unexpected keys": unexpected},
        "Use a checkpoint saved by flash-vstream or one in the released Flash-VStream-7b layout.",
    )


def _load_clip_from_tower(model, config: FlashVStreamConfig) -> None:
    """Fill the vision tower from ``vision_tower_name`` (``mm_vision_tower`` of released configs), strictly."""
    from transformers import CLIPVisionModel

    name = config.vision_tower_name
    if not name:
        raise CheckpointLayoutError("checkpoint holds no vision-tower weights and its config names no vision tower")
    try:
        clip = CLIPVisionModel.from_pretrained(name, dtype=model.dtype)
    except OSError as err:
        raise CheckpointLayoutError(
            f"checkpoint holds no vision-tower weights and its vision tower {name!r} (mm_vision_tower) cannot be "
            f"loaded ({err}); point mm_vision_tower at a CLIP checkpoint directory or a reachable Hub id"
        ) from err
    model.vision_tower.clip.load_state_dict(clip.state_dict(), strict=True)


def validate_star_options(options: dict) -> dict:
    """The STAR family's options schema: fields of ``StarMemoryConfig`` (e.g. ``retrieval``, ``bank_capacity``).

    Raises:
        ValueError: naming an unknown option (and listing the known ones) or a bad value.
    """
    from flash_vstream.memory.star import StarMemoryConfig

    fields = StarMemoryConfig().to_dict()
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown STAR option(s) {unknown}; STAR options are the memory fields {sorted(fields)}")
    StarMemoryConfig.from_dict({**fields, **options})  # validates the values, naming a bad one
    return dict(options)


def config_is_released(path: Path) -> bool:
    """Whether a STAR checkpoint folder is in the released Flash-VStream-7b layout (``model_type: "vstream"``)."""
    return json.loads((Path(path) / "config.json").read_text())["model_type"] == "vstream"


def read_star_config(path: Path) -> FlashVStreamConfig:
    """The :class:`FlashVStreamConfig` of a STAR checkpoint folder, released (converted) or own layout."""
    path = Path(path)
    config_dict = json.loads((path / "config.json").read_text())
    if config_dict["model_type"] == "vstream":
        return config_from_legacy(VStreamLegacyConfig.from_dict(config_dict), checkpoint_dir=path)
    return FlashVStreamConfig.from_dict(config_dict)


def load_star_model(
    path: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None, **options
):
    """Load the ``FlashVStreamForCausalLM`` of a released-layout or own-format directory, strictly.

    Handles ``model_type`` ``"vstream"`` (released layout, converted) and ``"flash_vstream"`` (own format).

    Args:
        path: checkpoint directory.
        dtype: weights dtype.
        device: where to put the model (default: stay on the CPU).
        **options: ``StarMemoryConfig`` fields to override, e.g. ``retrieval="paper"`` (validated by
            :func:`validate_star_options`).

    Raises:
        CheckpointLayoutError: for missing, unexpected or mis-shaped keys, naming them.
        ValueError: for an unknown option or a bad value.
    """
    path = Path(path)
    options = validate_star_options(options)
    config = read_star_config(path)
    released = config_is_released(path)
    if options:
        config.memory_config = {**config.memory_config, **options}
    model = _strict_load(config, path, dtype, key_mapping=RELEASED_KEY_MAP if released else None)
    return model if device is None else model.to(device)
