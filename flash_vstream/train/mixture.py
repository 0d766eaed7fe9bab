"""Data mixtures: several data files, each with a sampling strategy and its own media folders, from YAML.

A mixture file (examples ship in the repository's ``configs`` folder, under ``data``)::

    # flash-vstream data check --data star_stage1_mixture.yaml --media-root DATA_ROOT
    seed: 0
    sources:
      - path: pretrain/llava_558k_with_webvid.json
        image_root: pretrain/image_features
        video_root: pretrain/video_features
      - path: finetune/extra.jsonl
        strategy: random        # all | first | random | percent
        count: 1000

Every relative path in a mixture (``path`` and the three roots) is relative to one *data root*: the
``--media-root`` of the command (``load_mixture(..., root=...)``), or the mixture file's folder when none is given.
A source's media resolve under ``video_root`` (``video``/``videos`` rows) and ``image_root`` (``image`` rows), each
defaulting to ``media_root``, which defaults to the data root.

Strategies pick from a source's *usable* samples (after malformed rows and missing media are dropped), so a
mixture gets the counts it asks for:

- ``all``: every sample;
- ``first``: the first ``count`` in file order;
- ``random``: ``count`` drawn without replacement with ``random.Random(seed)``, kept in file order;
- ``percent``: ``floor(usable * percent / 100)`` drawn the same way (``percent`` in (0, 100]).

``seed`` is the source's own or else the mixture's, so a mixture gives the same selection on every run and every
rank. A ``first``/``random`` source with fewer usable samples than ``count`` keeps them all and reports the
shortfall; with ``strict`` that is an error.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path

from flash_vstream.train.data import DataError, Media, Sample, SourceData, load_samples

__all__ = ["STRATEGIES", "LoadedMixture", "LoadedSource", "Mixture", "SourceSpec", "load_mixture", "select"]

STRATEGIES = ("all", "first", "random", "percent")
MIXTURE_SUFFIXES = (".yaml", ".yml")


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class SourceSpec:
    """One data file of a mixture and how much of it to take."""

    path: Path
    """The JSON/JSONL data file (relative: to the data root)."""
    strategy: str = "all"
    """"all", "first" (``count``), "random" (``count``) or "percent" (``percent``)."""
    count: int | None = None
    """Samples to take with "first" and "random" (>= 1); unused otherwise."""
    percent: float | None = None
    """Share of the usable samples to take with "percent", in (0, 100]; unused otherwise."""
    seed: int | None = None
    """Seed of "random"/"percent" draws; ``None``: the mixture's ``seed``."""
    media_root: Path | None = None
    """Folder media paths are relative to (relative: to the data root); ``None``: the data root."""
    image_root: Path | None = None
    """Folder of ``image`` rows' paths (the LLaVA recipes' ``image_folder``); ``None``: ``media_root``."""
    video_root: Path | None = None
    """Folder of ``video``/``videos`` rows' paths (the recipes' ``video_folder``); ``None``: ``media_root``."""
    name: str | None = None
    """Label in reports; ``None``: the file name."""

    def __post_init__(self) -> None:
        for name in ("path", "media_root", "image_root", "video_root"):
            value = getattr(self, name)
            if value is None and name != "path":
                continue
            if not isinstance(value, (str, Path)) or not str(value):
                raise ValueError(f"source {name} must be a non-empty path, got {value!r}")
            object.__setattr__(self, name, Path(value))
        if self.strategy not in STRATEGIES:
            raise ValueError(f"source strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.strategy in ("first", "random"):
            _check_int(self.count, f"source count (strategy {self.strategy!r})", 1)
        elif self.count is not None:
            raise ValueError(f"source count is only used by strategies 'first' and 'random', not {self.strategy!r}")
        if self.strategy == "percent":
            if isinstance(self.percent, bool) or not isinstance(self.percent, (int, float)):
                raise ValueError(f"source percent (strategy 'percent') must be a number, got {self.percent!r}")
            if not 0 < self.percent <= 100:
                raise ValueError(f"source percent must be in (0, 100], got {self.percent!r}")
        elif self.percent is not None:
            raise ValueError(f"source percent is only used by strategy 'percent', not {self.strategy!r}")
        if self.seed is not None:
            _check_int(self.seed, "source seed", 0)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"source name must be a non-empty string, got {self.name!r}")

    @property
    def label(self) -> str:
        """``name``, or the file name."""
        return self.name or self.path.name

    def describe(self) -> str:
        """The strategy in words: ``"all"``, ``"first 100"``, ``"random 100"``, ``"10%"``."""
        if self.strategy == "percent":
            return f"{self.percent:g}%"
        return self.strategy if self.strategy == "all" else f"{self.strategy} {self.count}"


@dataclass(frozen=True)
class Mixture:
    """Data files to train on, each with its sampling strategy."""

    sources: tuple[SourceSpec, ...]
    """The data files, in order (their samples are concatenated in this order)."""
    seed: int = 0
    """Default seed of the sources' random draws."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if not self.sources or not all(isinstance(s, SourceSpec) for s in self.sources):
            raise ValueError("mixture sources must be a non-empty list of sources")
        _check_int(self.seed, "mixture seed", 0)

    @classmethod
    def from_dict(cls, data: dict, where: str = "mixture") -> Mixture:
        """Build from parsed YAML, rejecting unknown keys.

        Raises:
            ValueError: naming ``where``, the source index and the bad or unknown key.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping with 'sources' (and optionally 'seed')")
        _reject_unknown(data, {f.name for f in fields(cls)}, where)
        sources = data.get("sources")
        if not isinstance(sources, list) or not sources:
            raise ValueError(f"{where}: 'sources' must be a non-empty list of {{path: ..., strategy: ...}}")
        specs = []
        for i, source in enumerate(sources):
            here = f"{where}: sources[{i}]"
            if not isinstance(source, dict):
                raise ValueError(f"{here} must be a mapping with at least 'path'")
            _reject_unknown(source, {f.name for f in fields(SourceSpec)}, here)
            if "path" not in source:
                raise ValueError(f"{here} has no 'path'")
            try:
                specs.append(SourceSpec(**source))
            except ValueError as err:
                raise ValueError(f"{here}: {err}") from None
        try:
            return cls(tuple(specs), **({"seed": data["seed"]} if "seed" in data else {}))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Mixture:
        """Read a mixture YAML file.

        Raises:
            FileNotFoundError: when it does not exist.
            ValueError: for invalid YAML or an invalid mixture, naming the file.
        """
        from flash_vstream.yamlfiles import read_yaml

        data = read_yaml(path, "mixture", "a mixture YAML file")
        return cls.from_dict(data, where=str(path))

    @classmethod
    def single(cls, path: str | Path) -> Mixture:
        """A mixture of one data file, taken whole (``data check --data FILE.json``)."""
        return cls((SourceSpec(Path(path).absolute()),))


def _reject_unknown(data: dict, known: set[str], where: str) -> None:
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")


def select(samples: list[Sample], spec: SourceSpec, seed: int) -> tuple[list[Sample], int]:
    """Apply ``spec``'s strategy to a source's usable samples.

    Args:
        samples: the usable samples, in file order.
        spec: the source (its strategy, count/percent and seed).
        seed: the mixture's seed, used when ``spec.seed`` is ``None``.

    Returns:
        ``(selected, shortfall)``: the selected samples in file order, and how many "first"/"random" asked for but
        the source lacks.
    """
    n = len(samples)
    if spec.strategy == "all":
        return list(samples), 0
    if spec.strategy == "first":
        return list(samples[: spec.count]), max(spec.count - n, 0)
    wanted = spec.count if spec.strategy == "random" else math.floor(n * Fraction(str(spec.percent)) / 100)
    take = min(wanted, n)
    rng = random.Random(spec.seed if spec.seed is not None else seed)
    picked = sorted(rng.sample(range(n), take))
    return [samples[i] for i in picked], wanted - take


@dataclass
class LoadedSource:
    """One source of a loaded mixture."""

    spec: SourceSpec
    """The source as configured."""
    data: SourceData
    """Everything read from the file (rows, usable samples, skips, issues)."""
    selected: list[Sample] = field(default_factory=list)
    """The samples the strategy picked, in file order."""
    shortfall: int = 0
    """Samples "first"/"random" asked for beyond the usable ones."""


@dataclass
class LoadedMixture:
    """A mixture read from disk."""

    mixture: Mixture
    sources: list[LoadedSource]

    @property
    def samples(self) -> list[Sample]:
        """The selected samples of every source, concatenated in source order."""
        return [sample for source in self.sources for sample in source.selected]


def _under(root: Path, path: Path | None) -> Path | None:
    return None if path is None else root / path


def load_mixture(
    mixture: Mixture | str | Path,
    root: str | Path | None = None,
    *,
    strict: bool = False,
    media_check: Callable[[Media], None] | None = None,
) -> LoadedMixture:
    """Read every source of a mixture and apply its strategy.

    Args:
        mixture: a :class:`Mixture`, a mixture YAML file, or one JSON/JSONL data file (taken whole).
        root: the data root relative paths are resolved against; default: the mixture file's folder (the current
            folder for a :class:`Mixture` object).
        strict: raise on the first malformed row, unusable medium or shortfall.
        media_check: passed to :func:`~flash_vstream.train.data.load_samples` (a model family's check of what it
            can read).

    Raises:
        FileNotFoundError: for a missing file or media folder.
        ValueError: for an invalid mixture; :class:`~flash_vstream.train.data.DataError` with ``strict``.
    """
    if not isinstance(mixture, Mixture):
        path = Path(mixture)
        if root is None:
            root = path.parent
        mixture = Mixture.from_file(path) if path.suffix.lower() in MIXTURE_SUFFIXES else Mixture.single(path)
    root = Path(root) if root is not None else Path.cwd()
    loaded = []
    for spec in mixture.sources:
        media_root = _under(root, spec.media_root) or root
        data = load_samples(
            root / spec.path,
            _under(root, spec.video_root) or media_root,
            image_root=_under(root, spec.image_root) or media_root,
            strict=strict,
            media_check=media_check,
        )
        selected, shortfall = select(data.samples, spec, mixture.seed)
        if shortfall and strict:
            raise DataError(
                f"{data.path}: strategy {spec.describe()} asks for {shortfall} more sample(s) than the "
                f"{len(data.samples)} usable; lower 'count' or use strategy 'all'"
            )
        loaded.append(LoadedSource(spec, data, selected, shortfall))
    return LoadedMixture(mixture, loaded)
