"""Imports point down: pipelines -> components -> tipsv2_core (DESIGN §3)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "tipsv2_core": {
        "ray",
        "kfp",
        "mlflow",
        "dvc",
        "great_expectations",
        "boto3",
        "components",
        "pipelines",
    },
    "components": {"kfp", "pipelines"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    bad = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        hits = imported_roots(path) & FORBIDDEN[layer]
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert bad == {}
