"""Model-option presets: small YAML files under ``configs/models/`` passed to ``flash-vstream ask --config``.

A preset names the model family it is for and the options ``load_model`` receives::

    # flash-vstream ask --model IVGSZ/Flash-VStream-7b --config configs/models/star-paper-retrieval.yaml ...
    family: star
    options:
      retrieval: paper

Options given on the command line (``--option KEY=VALUE``) override the file's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

FAMILIES = ("star", "flash")
FLASH_OPTIONS = ("rope_mode",)


def load_options_file(path: str | Path) -> tuple[str, dict]:
    """Read and validate a preset; returns ``(family, options)``.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: for malformed YAML, unknown keys, an unknown family or an invalid option, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or set(data) - {"family", "options"}:
        raise ValueError(f"{path}: expected a mapping with keys 'family' and 'options'")
    family, options = data.get("family"), data.get("options") or {}
    if family not in FAMILIES:
        raise ValueError(f"{path}: family must be one of {FAMILIES}, got {family!r}")
    if not isinstance(options, dict):
        raise ValueError(f"{path}: 'options' must be a mapping of option names to values")
    validate_options(family, options, where=str(path))
    return family, options


def validate_options(family: str, options: dict, where: str = "options") -> None:
    """Check option names and values for ``family`` without loading a model."""
    if family == "star":
        from flash_vstream.memory.star import StarMemoryConfig

        try:
            StarMemoryConfig.from_dict(options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err
        return
    unknown = set(options) - set(FLASH_OPTIONS)
    if unknown:
        raise ValueError(f"{where}: unknown Flash-family option(s) {sorted(unknown)}; supported: {FLASH_OPTIONS}")
    if options.get("rope_mode", "paper") not in ("paper", "reference"):
        raise ValueError(f"{where}: rope_mode must be 'paper' or 'reference', got {options['rope_mode']!r}")
