"""The family registry: one record per model family, registered in one place.

A *family* is a way of turning video into visual tokens for a language model (the STAR memory on CLIP, Flash Memory
inside Qwen-VL, ...). Its record says everything the rest of the code base needs to know about it:

- which checkpoint ``model_type`` values it loads (``load_model`` dispatches on the checkpoint's own
  ``config.json``, never on its path). A ``model_type`` belongs to one family by default; another family may
  also load it (``shared_model_types``) when asked for by name (``load_model(..., family=)``, a preset's
  ``family:``) or when ``config.json`` carries the marker ``"flash_vstream_family": "<name>"`` that this
  project's own saves write (:func:`family_for_config`);
- its config class, its model loader (which returns only the model), its input builder, its frame-sampling
  preset, its ``make-tiny`` builder and variants, and its options schema.

Every callable is named as a ``"package.module:attribute"`` string and imported on first use, so importing this
module (and ``flash-vstream --help``) stays cheap: a family's heavy imports happen only when it is used.

Adding a family means one new module with those callables plus one :func:`register_family` call in
:func:`_builtin_families`.

>>> family_for_model_type("vstream").name
'star'
>>> sorted(tiny_variants())[:2]
['flash-qwen2_5vl', 'flash-qwen2vl']
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SamplerPreset:
    """How a family samples frames from a video file by default (the fields of ``video.FrameSampler``)."""

    policy: str = "fps"
    """Index policy: "fps", "uniform" or "segment_middle"."""
    target_fps: float = 1.0
    """Frames per second of the "fps" policy (both released families saw 1-fps video)."""
    min_frames: int = 1
    """Fewest frames of the "fps" policy."""
    max_frames: int = 240
    """Most frames of the "fps" policy (uniformly re-sampled above it)."""

    def build(self):
        """The :class:`~flash_vstream.video.FrameSampler` of this preset."""
        from flash_vstream.video.sampling import FrameSampler

        return FrameSampler(
            policy=self.policy, target_fps=self.target_fps, min_frames=self.min_frames, max_frames=self.max_frames
        )


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: short name used by presets (``family: star``) and messages.
        description: one line for ``--help`` and errors.
        model_types: checkpoint ``config.json`` ``model_type`` values this family loads.
        config_classes: ``"module:Class"`` of each of the family's own Hugging Face configs.
        load_model: ``"module:function"`` with the signature ``(path, *, dtype, device, **options) -> model``;
            it validates ``options`` itself (through ``validate_options``) and returns only the model.
        input_builder: ``"module:Class"`` whose ``for_model(model, tokenizer)`` returns the callable that turns
            ``(question, frames=|features=, assistant_prefix=)`` into ``generate`` kwargs.
        validate_options: ``"module:function"`` ``(options: dict) -> dict``, the options schema: raises
            ``ValueError`` naming an unknown option or a bad value.
        make_tiny: ``"module:function"`` ``(out, *, variant, layout, weights_format, seed) -> Path``.
        tiny_variants: ``make-tiny --variant`` names this family builds.
        sampler: default frame sampling for ``answer(video=...)``.
        session_backend: ``"module:Class"`` that ``StreamSession`` drives (``Class(vs)``), or ``None`` when the
            family cannot stream.
        shared_model_types: ``model_type`` values another family loads by default, which this one loads only when
            named (``family=`` or the ``flash_vstream_family`` marker of ``config.json``).
    """

    name: str
    description: str
    model_types: tuple[str, ...]
    config_classes: tuple[str, ...]
    load_model: str
    input_builder: str
    validate_options: str
    make_tiny: str
    tiny_variants: tuple[str, ...]
    sampler: SamplerPreset = field(default_factory=SamplerPreset)
    session_backend: str | None = None
    shared_model_types: tuple[str, ...] = ()

    def resolve(self, attribute: str) -> Any:
        """Import and return the object a ``"module:attribute"`` field names (``attribute`` is the field name)."""
        return _import(getattr(self, attribute))

    def configs(self) -> list[type]:
        """The family's config classes, imported."""
        return [_import(target) for target in self.config_classes]

    def check_options(self, options: dict, where: str = "options") -> dict:
        """Validate ``options`` against the family's schema without loading a model.

        Raises:
            ValueError: naming ``where``, the bad option and the valid ones.
        """
        try:
            return self.resolve("validate_options")(dict(options))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err


def _import(target: str) -> Any:
    module_name, _, name = target.partition(":")
    return getattr(importlib.import_module(module_name), name)


_REGISTRY: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry.

    Raises:
        ValueError: when its name, a model type or a tiny variant is already taken.
    """
    if family.name in _REGISTRY:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    for other in _REGISTRY.values():
        for kind, mine, theirs in (
            ("model_type", family.model_types, other.model_types),
            ("make-tiny variant", family.tiny_variants, other.tiny_variants),
        ):
            clash = sorted(set(mine) & set(theirs))
            if clash:
                raise ValueError(f"{kind} {clash} of family {family.name!r} is already family {other.name!r}'s")
    _REGISTRY[family.name] = family
    return family


@cache
def _builtin_families() -> None:
    """Register the families that ship with flash-vstream (once, on first use of the registry)."""
    register_family(
        Family(
            name="star",
            description="Flash-VStream STAR memory (2024): CLIP ViT-L/14 + spatial/temporal/abstract/retrieved "
            "memory + any causal LM",
            model_types=("vstream", "flash_vstream"),
            config_classes=("flash_vstream.config:FlashVStreamConfig",),
            load_model="flash_vstream.model.checkpoints:load_star_model",
            input_builder="flash_vstream.inference.star_inputs:StarInputBuilder",
            validate_options="flash_vstream.model.checkpoints:validate_star_options",
            make_tiny="flash_vstream.model.tiny:make_tiny_star",
            tiny_variants=("star-vicuna", "star-qwen2"),
            # The released model saw 1-fps video; the cap keeps very long files cheap to decode (4 h).
            sampler=SamplerPreset(max_frames=14400),
            session_backend="flash_vstream.inference.session_backends:StarSessionBackend",
        )
    )
    register_family(
        Family(
            name="streamingvlm",
            description="StreamingVLM (2025): Qwen2.5-VL with a text-sink + sliding-window KV cache and contiguous "
            "RoPE, live commentary",
            model_types=(),
            # Plain Qwen2.5-VL checkpoints are the Flash family's by default; the published StreamingVLM
            # fine-tune has that layout, so it loads here when named (preset ``family: streamingvlm``).
            shared_model_types=("qwen2_5_vl",),
            config_classes=(),
            load_model="flash_vstream.model.streamingvlm:load_streamingvlm_model",
            input_builder="flash_vstream.inference.streamingvlm_session:StreamingVLMInputBuilder",
            validate_options="flash_vstream.model.streamingvlm:validate_streamingvlm_options",
            make_tiny="flash_vstream.model.streamingvlm:make_tiny_streamingvlm",
            tiny_variants=("streamingvlm",),
            # 2 fps: one temporal patch (2 frames) per 1-s chunk, as the model was trained.
            sampler=SamplerPreset(target_fps=2.0, max_frames=480),
            session_backend="flash_vstream.inference.streamingvlm_session:StreamingVLMSessionBackend",
        )
    )
    register_family(
        Family(
            name="flash",
            description="Flash-VStream Flash Memory (ICCV 2025) inside Qwen2-VL / Qwen2.5-VL",
            model_types=(
                "flash_vstream_qwen2_vl",
                "flash_vstream_qwen2_5_vl",
                "qwen2_vl",
                "qwen2_5_vl",
            ),
            config_classes=(
                "flash_vstream.model.qwen2vl:FlashVStreamQwen2VLConfig",
                "flash_vstream.model.qwen2vl:FlashVStreamQwen2_5_VLConfig",
            ),
            load_model="flash_vstream.model.qwen2vl_checkpoints:load_flash_model",
            input_builder="flash_vstream.inference.qwen2vl_inputs:FlashInputBuilder",
            validate_options="flash_vstream.model.qwen2vl_checkpoints:validate_flash_options",
            make_tiny="flash_vstream.model.tiny_qwen2vl:make_tiny_flash",
            tiny_variants=("flash-qwen2vl", "flash-qwen2_5vl"),
            # The published evaluation: 1 fps, at most 240 frames, uniformly re-sampled above.
            sampler=SamplerPreset(max_frames=240),
            session_backend="flash_vstream.inference.session_backends:FlashSessionBackend",
        )
    )


def families() -> dict[str, Family]:
    """All registered families by name."""
    _builtin_families()
    return dict(_REGISTRY)


def get_family(name: str) -> Family:
    """The family called ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    known = families()
    if name not in known:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(sorted(known))}")
    return known[name]


def family_for_model_type(model_type: str) -> Family:
    """The family that loads checkpoints of ``model_type``.

    Raises:
        ValueError: when no family does; the message lists the supported model types.
    """
    for family in families().values():
        if model_type in family.model_types:
            return family
    raise ValueError(
        f"checkpoint has model_type {model_type!r}, which flash-vstream cannot load; supported model types: "
        f"{', '.join(supported_model_types())}. Point --model at a Flash-VStream, Qwen2-VL or Qwen2.5-VL checkpoint."
    )


FAMILY_MARKER = "flash_vstream_family"
"""``config.json`` key naming the family of a checkpoint whose ``model_type`` another family also loads (the
model modules that write it spell it out themselves: this module sits above them)."""


def family_for_config(config, requested: str | None = None, where: str = "checkpoint") -> Family:
    """The family that loads a checkpoint config (a ``config.json`` dict or a transformers config).

    Precedence: ``requested`` (the caller's ``family=``), then the config's ``flash_vstream_family`` marker, then
    the ``model_type`` table (:func:`family_for_model_type`).

    Raises:
        ValueError: for an unknown family name, or a named family that does not load this ``model_type``.
    """
    field = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    model_type, marker = field("model_type"), field(FAMILY_MARKER)
    name = requested or marker
    if name is None:
        return family_for_model_type(model_type)
    if name not in families():
        raise ValueError(f"{where} names model family {name!r} ({FAMILY_MARKER}), which is not registered; known "
                         f"families: {', '.join(sorted(families()))}")
    family = get_family(name)
    if model_type in family.model_types + family.shared_model_types:
        return family
    found = family_for_model_type(model_type)
    raise ValueError(
        f"the options are for the {name} family but {where} is a {found.name} checkpoint "
        f"({found.description}); use a preset made for {found.name} models"
    )


def supported_model_types() -> list[str]:
    return sorted(t for family in families().values() for t in family.model_types)


def tiny_variants() -> dict[str, Family]:
    """``make-tiny --variant`` name -> the family that builds it."""
    return {variant: family for family in families().values() for variant in family.tiny_variants}


def load_preset(path: str | Path) -> tuple[str, dict]:
    """Read and validate a model-options preset (``configs/models/*.yaml``); returns ``(family, options)``.

    A preset names the family it is for and the options ``load_model`` receives::

        # flash-vstream ask --model IVGSZ/Flash-VStream-7b --config configs/models/star-paper-retrieval.yaml ...
        family: star
        options:
          retrieval: paper

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: for malformed YAML, unknown keys, an unknown family or an invalid option, naming the file.
    """
    from flash_vstream.yamlfiles import read_yaml

    path = Path(path)
    data = read_yaml(path, "preset", "a YAML file such as configs/models/<name>.yaml")
    if not isinstance(data, dict) or set(data) - {"family", "options"}:
        raise ValueError(f"{path}: expected a mapping with the keys 'family' and 'options'")
    name, options = data.get("family"), data.get("options") or {}
    if name not in families():
        raise ValueError(f"{path}: 'family' must be one of {sorted(families())}, got {name!r}")
    if not isinstance(options, dict):
        raise ValueError(f"{path}: 'options' must be a mapping of option names to values")
    return name, get_family(name).check_options(options, where=str(path))
