"""Reading the project's YAML files (model presets, data mixtures, training configs) with one clear error each."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_yaml(path: str | Path, what: str, example: str, error: type[ValueError] = ValueError) -> Any:
    """The parsed content of the YAML file at ``path`` (``None`` for an empty file).

    Args:
        path: the file.
        what: what the file is, for messages ("preset", "mixture", "training config").
        example: the kind of file to pass instead of a missing one (e.g. "configs/models/<name>.yaml").
        error: the ``ValueError`` subclass raised for invalid YAML.

    Raises:
        FileNotFoundError: when ``path`` is not a file, naming it and ``example``.
        ValueError: (``error``) for invalid YAML, in one line naming the file.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; pass {example}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise error(f"{path} is not valid YAML: {err}".replace("\n", " ")) from None
