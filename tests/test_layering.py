"""Layers import only downward: video -> vision -> memory -> model -> inference -> cli; nothing imports eval/.

Every import counts, also those inside functions (lazy imports are still dependencies).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flash_vstream"
LAYERS = {
    "distributed": 0,
    "yamlfiles": 0,
    "video": 0,
    "vision": 1,
    "memory": 2,
    "config": 3,
    "model": 3,
    "inference": 4,
    "train": 4,
    "families": 4,
    "data": 4,
    "serve": 5,
    "cli": 5,
}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def layer_of(parts: list[str]) -> int:
    top = parts[0]
    if top not in LAYERS:
        raise AssertionError(f"flash_vstream.{top} has no layer in tests/test_layering.py; add it to LAYERS")
    return LAYERS[top]


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_go_downward_only(path):
    here = path.relative_to(PACKAGE).with_suffix("").parts
    mine = layer_of(list(here))
    upward = []
    for name in imported_modules(path):
        if name.startswith("flash_vstream_eval") or name == "eval" or name.startswith("eval."):
            upward.append(name)
        elif name.startswith("flash_vstream.") and layer_of(name.split(".")[1:]) > mine:
            upward.append(name)
    assert upward == [], f"{path.relative_to(PACKAGE)} (layer {mine}) imports upward: {upward}"
