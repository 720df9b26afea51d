"""Side by side: the weights of two exports (tensor by tensor) and two sets of metrics."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WeightDiff:
    """How far apart two exports' fp32 weights are.

    identical: every tensor equal bit for bit; max_abs_diff: over all tensors (0.0 when
    identical); tensors: how many were compared; mismatched: names or shapes in one export
    and not the other (the models differ in structure).
    """

    identical: bool
    max_abs_diff: float
    tensors: int
    mismatched: tuple[str, ...] = ()


def _initializers(path: Path) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def compare_exports(original: Path, reproduced: Path) -> WeightDiff:
    """Compares the initializers of every fp32 graph the two export directories share.

    Both exports are written by the same code (the recorded commit's), so equal weights
    give equal initializers under equal names.
    """
    import numpy as np

    def graphs(root: Path) -> dict[str, str]:
        meta = json.loads((root / "export_meta.json").read_text())
        return dict((meta.get("files") or {}).get("fp32") or {})

    mine, theirs = graphs(original), graphs(reproduced)
    mismatched = [f"graph {g}" for g in sorted(set(mine) ^ set(theirs))]
    worst, count, identical = 0.0, 0, True
    for graph in sorted(set(mine) & set(theirs)):
        a = _initializers(original / mine[graph])
        b = _initializers(reproduced / theirs[graph])
        mismatched += [f"{graph}:{n}" for n in sorted(set(a) ^ set(b))]
        for name in sorted(set(a) & set(b)):
            x, y = a[name], b[name]
            if x.shape != y.shape or x.dtype != y.dtype:
                mismatched.append(
                    f"{graph}:{name} {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
                )
                continue
            count += 1
            if x.tobytes() == y.tobytes():
                continue
            identical = False
            if np.issubdtype(x.dtype, np.number):
                diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
                worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
            else:
                worst = math.inf
    return WeightDiff(identical and not mismatched, worst, count, tuple(mismatched))


@dataclass(frozen=True)
class MetricRow:
    name: str
    original: float | None
    reproduced: float | None

    @property
    def delta(self) -> float | None:
        if self.original is None or self.reproduced is None:
            return None
        return self.reproduced - self.original


def compare_metrics(
    original: Mapping[str, float], reproduced: Mapping[str, float]
) -> list[MetricRow]:
    """Every metric of either side, by name, with its delta (None where one side lacks it)."""
    names = sorted(set(original) | set(reproduced))
    return [MetricRow(n, original.get(n), reproduced.get(n)) for n in names]


def within(rows: list[MetricRow], tolerance: float) -> list[str]:
    """The metrics whose |delta| exceeds `tolerance`, or that one side lacks."""
    bad = []
    for row in rows:
        if row.delta is None or not math.isfinite(row.delta) or abs(row.delta) > tolerance:
            bad.append(row.name)
    return bad
