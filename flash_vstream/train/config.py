"""The typed config tree of a training run: YAML file, then ``key=value`` overrides, unknown keys rejected.

One tree, three branches plus the resume policy::

    TrainConfig
      model: ModelArgs          # start point, template, load options, trainable flags, LoRA (LoraArgs)
      data: DataArgs            # data file or mixture, media root, max length, strict
      training: TrainingArguments  # transformers' own, parsed by HfArgumentParser
      resume: "auto"            # "auto" | "never" | a checkpoint folder

Values are merged in this order, each overriding the one before: the dataclass defaults (transformers' for
``training``), the project defaults of :data:`TRAINING_DEFAULTS` (gradient checkpointing on, a log line per step,
no external reporters), the YAML file (and the ``base:`` files it names), and the command line. A YAML file holds
only what differs::

    # flash-vstream train --config configs/train/star_debug.yaml
    base: star_stage2.yaml          # a file this one overrides (relative to this file's folder)
    model:
      start: runs/tiny/star-vicuna
    training:
      max_steps: 20

Overrides use dotted paths and YAML values: ``training.learning_rate=1e-4``, ``model.lora.r=8``,
``model.options.retrieval=paper``, ``data.strict=true``. A key that no dataclass declares is an error naming its
dotted path and the closest known key. Relative paths are relative to the folder the command runs in.

:func:`config_to_dict` gives the resolved tree (every field); :func:`dump_config` writes it as
``train_config.yaml`` into the run folder, every checkpoint and the saved model, and :func:`load_train_config`
reads that file back into the same tree.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flash_vstream.yamlfiles import read_yaml

__all__ = [
    "CONFIG_FILE",
    "DataArgs",
    "LoraArgs",
    "ModelArgs",
    "TRAINING_DEFAULTS",
    "TrainConfig",
    "config_to_dict",
    "dump_config",
    "load_train_config",
    "parse_overrides",
]

CONFIG_FILE = "train_config.yaml"
"""Name of the resolved config in the run folder, each checkpoint and the saved model."""

DTYPES = ("float32", "bfloat16", "float16")
RESUME_MODES = ("auto", "never")
TRAINABLE_FLAGS = (
    "vision_trainable",
    "memory_trainable",
    "projector_trainable",
    "merger_trainable",
    "decoder_trainable",
)

TRAINING_DEFAULTS: dict[str, Any] = {
    # Spelled activation_checkpointing from transformers 5.24 on; training_defaults() picks the name.
    "gradient_checkpointing": True,
    # Non-reentrant checkpointing needs no inputs that require grad, so frozen embeddings and towers are fine.
    "gradient_checkpointing_kwargs": {"use_reentrant": False},
    # The collator's keys are the model's inputs; the Trainer must not drop the visual ones.
    "remove_unused_columns": False,
    "logging_steps": 1,
    "report_to": "none",
    "save_strategy": "steps",
    "save_steps": 500,
}
"""Where this project's runs differ from transformers' ``TrainingArguments`` defaults (a file overrides them)."""

_RENAMED = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def training_defaults() -> dict[str, Any]:
    """:data:`TRAINING_DEFAULTS` under the names this transformers version uses."""
    fields = _training_fields()
    return {(_RENAMED[key] if _RENAMED.get(key) in fields else key): value for key, value in TRAINING_DEFAULTS.items()}


def _training_fields() -> dict[str, dataclasses.Field]:
    """``TrainingArguments``' init fields, without the deprecated aliases (their new names are the fields)."""
    from transformers import TrainingArguments

    return {
        f.name: f
        for f in dataclasses.fields(TrainingArguments)
        if f.init and not str(f.metadata.get("help", "")).startswith("Deprecated alias")
    }


class ConfigError(ValueError):
    """A training config that cannot be used: the message names the file or dotted key and the fix."""


@dataclass
class LoraArgs:
    """LoRA through PEFT. With LoRA on, PEFT decides what trains: the adapters and ``modules_to_save``."""

    enabled: bool = False
    """Train LoRA adapters instead of the full weights."""
    r: int = 64
    """Rank of the adapters."""
    alpha: int = 16
    """Scaling numerator: the update is ``alpha / r * B @ A``."""
    dropout: float = 0.05
    """Dropout on the adapters' input."""
    target_modules: str | list[str] | None = None
    """Modules that get adapters: a regular expression matched against the full module name, or a list of name
    suffixes. ``None``: the family's default (every linear layer of the language model; for the Flash family also
    the merger MLP, as published)."""
    modules_to_save: list[str] | None = None
    """Modules trained in full beside the adapters and saved with them. ``None``: the family's default
    (Flash: ``lm_head``, as published; STAR: the projector and the abstract memory's attention)."""
    merge: bool = False
    """At the end, also write the merged model (base + adapters) as a full checkpoint ``load_model`` loads."""

    def __post_init__(self) -> None:
        _positive(self.r, "model.lora.r")
        _positive(self.alpha, "model.lora.alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ModelArgs:
    """What is trained and where it starts.

    Start points (exactly one): ``start`` (any folder ``load_model`` loads: a released checkpoint, a stage-1 output,
    a plain Qwen2-VL/Qwen2.5-VL-Instruct folder, a ``make-tiny`` folder), or ``llm`` + ``vision_tower`` (a plain
    causal LM and a CLIP vision tower, joined by a new projector and STAR memory).
    """

    start: str | None = None
    """Checkpoint folder (or Hub id) to start from."""
    family: str | None = None
    """Model family the ``start`` checkpoint is loaded as (``star``, ``flash``, ``streamingvlm``). ``None``: the
    checkpoint's own (its ``flash_vstream_family`` marker, else its ``model_type``). Needed only where a
    ``model_type`` is shared: ``streamingvlm`` starts from a plain Qwen2.5-VL-Instruct folder, which is otherwise
    the Flash family's. The trained model's ``config.json`` carries the family, so it loads as that family."""
    llm: str | None = None
    """A pretrained causal LM folder (with its tokenizer), e.g. Vicuna-7B; needs ``vision_tower``."""
    vision_tower: str | None = None
    """A CLIP folder or known id (e.g. CLIP ViT-L/14) for ``llm``."""
    projector_type: str = "mlp2x_gelu"
    """Projector of a model built from ``llm`` + ``vision_tower``."""
    memory: dict = field(default_factory=dict)
    """STAR memory fields of a model built from ``llm`` + ``vision_tower`` (default: the released sizes)."""
    template: str | None = None
    """Conversation template (STAR: ``plain``, ``vicuna_v1`` or ``chat_template``; Flash: ``chat_template``).
    ``None``: the start point's. It is written into the saved config, so inference uses it too."""
    options: dict = field(default_factory=dict)
    """Family load options, as ``ask --option`` takes them (e.g. ``retrieval: paper``)."""
    dtype: str = "float32"
    """Weights dtype while training. Mixed precision is ``training.bf16``; keep fp32 weights without DeepSpeed."""
    attn_implementation: str | None = "sdpa"
    """Attention kernel of the language model: ``eager``, ``sdpa``, ``flash_attention_2``; ``None``: the
    model's default."""
    vision_trainable: bool | None = None
    """Train the vision tower (both families). ``None``: as the start point's config says."""
    memory_trainable: bool | None = None
    """STAR: train the abstract memory's attention."""
    projector_trainable: bool | None = None
    """STAR: train the projector."""
    merger_trainable: bool | None = None
    """Flash: train the patch merger."""
    decoder_trainable: bool | None = None
    """Train the language model (both families)."""
    lora: LoraArgs = field(default_factory=LoraArgs)
    """LoRA settings."""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = build_dataclass(LoraArgs, self.lora, "model.lora")
        from_parts = self.llm is not None or self.vision_tower is not None
        if self.start is not None and from_parts:
            raise ConfigError("set either model.start or model.llm + model.vision_tower, not both")
        if self.start is None and not (self.llm and self.vision_tower):
            raise ConfigError(
                "no start point: set model.start (a checkpoint folder) or both model.llm and model.vision_tower"
            )
        if self.family is not None:
            from flash_vstream.families import families  # the registry module: no heavy imports

            known = sorted(families())
            if self.family not in known:
                raise ConfigError(f"model.family must be one of {known}, got {self.family!r}")
            if from_parts and self.family != "star":
                raise ConfigError(
                    f"model.family {self.family!r} cannot start from model.llm + model.vision_tower, which build a "
                    "STAR model; set model.start to a checkpoint folder"
                )
        if not from_parts and self.memory:
            raise ConfigError("model.memory only applies to a model built from model.llm + model.vision_tower")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.lora.enabled:
            set_flags = [f"model.{name}" for name in TRAINABLE_FLAGS if getattr(self, name) is not None]
            if set_flags:
                raise ConfigError(
                    f"{', '.join(set_flags)} cannot be combined with model.lora.enabled: with LoRA, PEFT trains the "
                    "adapters and model.lora.modules_to_save; list fully trained modules there instead"
                )

    def trainable_overrides(self) -> dict[str, bool]:
        """The ``*_trainable`` flags this config sets (the others keep the start point's values)."""
        return {name: getattr(self, name) for name in TRAINABLE_FLAGS if getattr(self, name) is not None}


@dataclass
class DataArgs:
    """The training data."""

    data: str = ""
    """A JSON/JSONL data file or a YAML mixture (see ``flash-vstream data check``)."""
    media_root: str | None = None
    """Folder media paths are relative to (a mixture's data root). ``None``: the data file's folder."""
    max_length: int | None = None
    """Most tokens of a sample (text + visual). ``None``: the family's published value (STAR 2048, Flash 14000)."""
    strict: bool = False
    """Fail on the first unusable row instead of skipping and counting it."""

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data.data is required: a .json/.jsonl data file or a mixture .yaml")
        if self.max_length is not None:
            _positive(self.max_length, "data.max_length")


@dataclass
class TrainConfig:
    """The whole run: model, data, transformers' ``TrainingArguments`` and the resume policy."""

    model: ModelArgs
    """Start point and what trains."""
    data: DataArgs
    """Training data."""
    training: Any
    """transformers' ``TrainingArguments`` (loop, optimiser, schedule, precision, DeepSpeed, checkpoints)."""
    resume: str = "auto"
    """``auto``: continue from the newest ``checkpoint-*`` in ``training.output_dir`` if there is one; ``never``:
    start fresh (a run folder that already holds checkpoints is then an error); or a checkpoint folder."""

    def __post_init__(self) -> None:
        if self.resume not in RESUME_MODES and not Path(self.resume).is_dir():
            raise ConfigError(f"resume must be 'auto', 'never' or an existing checkpoint folder, got {self.resume!r}")


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The :class:`TrainConfig` of a YAML file (and its ``base:`` files) with ``key=value`` overrides applied.

    Args:
        path: the YAML file; ``None``: overrides only.
        overrides: ``"dotted.key=value"`` strings; values are YAML (``1e-4``, ``true``, ``[a, b]``, ``null``).

    Raises:
        FileNotFoundError: for a missing file (or ``base:`` file).
        ConfigError: for malformed YAML, an unknown key (named by its dotted path), a wrong type or a bad value.
    """
    tree = _read_tree(Path(path), seen=()) if path is not None else {}
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    return build_config(tree, where=str(path) if path is not None else "the command line")


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["training.learning_rate=1e-4"]`` -> ``[("training.learning_rate", 1e-4)]`` (values parsed as YAML).

    Raises:
        ConfigError: for an item without ``=`` or with an empty key.
    """
    parsed = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"override {pair!r} is not KEY=VALUE with a dotted key, e.g. training.max_steps=10")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        parsed.append((key, value))
    return parsed


def build_config(tree: dict, where: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from a nested dict (a merged YAML tree).

    Raises:
        ConfigError: for unknown keys, wrong types or bad values, naming ``where`` and the dotted key.
    """
    tree = copy.deepcopy(tree)
    _reject_unknown(tree, {"model", "data", "training", "resume"}, "", where)
    try:
        model = build_dataclass(ModelArgs, tree.get("model") or {}, "model")
        data = build_dataclass(DataArgs, tree.get("data") or {}, "data")
        training_tree = tree.get("training") or {}
        if not training_tree.get("output_dir"):  # transformers would default it to ./trainer_output
            raise ConfigError("training.output_dir is required: the run folder (checkpoints, metrics, the model)")
        _check_deepspeed_precision(model.dtype, training_tree)
        training = build_training_arguments(_with_defaults(training_tree))
        resume = tree.get("resume", "auto")
        if not isinstance(resume, str):
            raise ConfigError(f"resume must be a string ('auto', 'never' or a folder), got {resume!r}")
        return TrainConfig(model=model, data=data, training=training, resume=resume)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


_PRECISION_FLAG = {"bfloat16": "bf16", "float16": "fp16"}


def _check_deepspeed_precision(dtype: str, training: dict) -> None:
    """Refuse 16-bit weights under DeepSpeed without its matching mixed-precision mode.

    Checked on the raw values, before ``TrainingArguments`` exists: building one with ``deepspeed`` set leaves
    transformers' process-wide DeepSpeed config alive. Without ``bf16``/``fp16`` DeepSpeed runs its fp32 path:
    it keeps no fp32 master copy, so the optimizer would step the 16-bit weights themselves.
    """
    flag = _PRECISION_FLAG.get(dtype)
    if flag is None or not training.get("deepspeed") or training.get(flag) is True:
        return
    raise ConfigError(
        f"model.dtype {dtype} under DeepSpeed needs training.{flag}: true (DeepSpeed then keeps fp32 master "
        f"weights); set it, or use model.dtype: float32"
    )


def _with_defaults(training: dict) -> dict:
    """The project defaults under the file's values (a default is dropped when the file sets its alias).

    Without CUDA ``use_cpu`` defaults to true: accelerate treats a ``torchrun`` or ``deepspeed`` launch as
    multi-process CPU training (gloo) only then.
    """
    import torch

    defaults = training_defaults()
    for old, new in _RENAMED.items():
        if old in training or new in training:
            defaults.pop(old, None)
            defaults.pop(new, None)
    if not torch.cuda.is_available():
        defaults["use_cpu"] = True
    return {**defaults, **training}


def build_training_arguments(values: dict):
    """The ``TrainingArguments`` of a dict, parsed by ``HfArgumentParser``; unknown keys named.

    Raises:
        ConfigError: for an unknown field, or a value ``TrainingArguments`` rejects.
    """
    from transformers import HfArgumentParser, TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    _reject_unknown(values, known, "training.", "training")
    hints = typing.get_type_hints(TrainingArguments)
    values = {key: _coerce_float(value, hints.get(key)) for key, value in values.items()}
    try:
        (args,) = HfArgumentParser(TrainingArguments).parse_dict(values, allow_extra_keys=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"training: {err}") from None
    return args


def build_dataclass(cls: type, values: Any, where: str):
    """An instance of the dataclass ``cls`` from a dict, each value checked against its field's type.

    Raises:
        ConfigError: for a non-mapping, an unknown key or a value of the wrong type, naming its dotted path.
    """
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(values, set(fields), f"{where}.", where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value or {}, f"{where}.{name}")
            continue
        value = _coerce_float(value, hint)
        if not _matches(value, hint):
            raise ConfigError(f"{where}.{name} must be {_describe(hint)}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def _read_tree(path: Path, seen: tuple[Path, ...]) -> dict:
    """The YAML file at ``path`` merged over its ``base:`` chain."""
    tree = read_yaml(path, "training config", "a YAML file such as configs/train/*.yaml", error=ConfigError) or {}
    real = path.resolve()
    if real in seen:
        raise ConfigError(f"{path}: 'base:' files form a cycle through {real}")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a training config is a mapping with model, data and training keys")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must name one YAML file, got {base!r}")
    return _deep_merge(_read_tree(path.parent / base, (*seen, real)), tree)


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "deepspeed":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _reject_unknown(values: dict, known: set[str], prefix: str, where: str) -> None:
    unknown = sorted(set(values) - known)
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(sorted(known))}"
    if len(known) > 20 and not close:
        hint = "; see transformers' TrainingArguments for the known keys"
    others = f" (and {', '.join(prefix + k for k in unknown[1:])})" if len(unknown) > 1 else ""
    raise ConfigError(f"unknown key {prefix}{key}{others} in {where}{hint}")


def _positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _hint_args(hint) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _coerce_float(value: Any, hint) -> Any:
    """YAML reads ``1e-4`` (no dot) as a string and ``1`` as an int; a float field takes both as floats."""
    if hint is None or float not in _hint_args(hint) or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _matches(value: Any, hint) -> bool:
    for option in _hint_args(hint):
        if option is Any or (option is type(None) and value is None):
            return True
        origin = typing.get_origin(option) or option
        if origin is bool:
            if isinstance(value, bool):
                return True
        elif origin is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif origin is list:
            (item,) = typing.get_args(option) or (Any,)
            if isinstance(value, list) and all(_matches(v, item) for v in value):
                return True
        elif isinstance(origin, type) and isinstance(value, origin):
            return True
    return False


def _describe(hint) -> str:
    names = []
    for option in _hint_args(hint):
        names.append("null" if option is type(None) else getattr(option, "__name__", str(option)))
        if typing.get_origin(option) is list:
            names[-1] = f"a list of {typing.get_args(option)[0].__name__}"
    return " or ".join(names)


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def config_to_dict(config: TrainConfig) -> dict:
    """The resolved tree: every field of every branch (``training`` as ``TrainingArguments.to_dict()``).

    Loading it back with :func:`build_config` gives an equal config.
    """
    fields = _training_fields()
    training = {key: value for key, value in config.training.to_dict().items() if key in fields}
    return {
        "model": dataclasses.asdict(config.model),
        "data": dataclasses.asdict(config.data),
        "training": _plain(training),
        "resume": config.resume,
    }


def dump_config(config: TrainConfig, folder: str | Path) -> Path:
    """Write the resolved config as ``folder/train_config.yaml``; returns the file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CONFIG_FILE
    header = "# flash-vstream train --config " + str(target) + "\n# The resolved config of this run (every field).\n"
    target.write_text(header + yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True))
    return target


def _plain(value: Any) -> Any:
    """YAML-safe plain values (enums as their values, tuples as lists, paths as strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    enum_value = getattr(value, "value", None)
    if isinstance(enum_value, (str, int, float)):
        return enum_value
    return str(value)
