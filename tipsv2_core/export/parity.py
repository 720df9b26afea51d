"""Parity of an exported graph with the PyTorch module it came from.

Every output of every input case is compared as max |onnx - torch| in float64. A NaN or
an infinity anywhere, or a shape mismatch, counts as an infinite difference: a graph that
produces NaN where PyTorch does not is broken, not "close on the finite part".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch

from tipsv2_core.export.inputs import InputCase

TOLERANCE = 1e-4  # fp32 export vs fp32 PyTorch (the bar)
METRIC = "export/onnx/max_abs_diff"  # docs/architecture.md, "Metric names"


def metric_name(precision: str) -> str:
    """`export/onnx/max_abs_diff` for fp32, `export/onnx/<precision>/max_abs_diff` else."""
    return METRIC if precision == "fp32" else f"export/onnx/{precision}/max_abs_diff"


def max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over all elements; inf for NaN/inf anywhere or different shapes."""
    if got.shape != want.shape:
        return math.inf
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if not np.isfinite(diff).all():
        return math.inf
    return float(diff.max()) if diff.size else 0.0


def _json_number(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no inf; null marks non-finite


@dataclass
class CaseResult:
    """The differences of one graph on one input case: {output name: max |Δ|}."""

    graph: str
    case: str
    diffs: dict[str, float]


@dataclass
class ParityReport:
    """All cases of one precision (fp32, fp16, int8) against fp32 PyTorch.

    tolerance None means "reported, not enforced" (fp16 and int8).
    """

    precision: str
    tolerance: float | None
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def max_abs_diff_per_output(self) -> dict[str, float]:
        """{"<graph>/<output>": max |Δ| over all cases}."""
        out: dict[str, float] = {}
        for c in self.cases:
            for name, d in c.diffs.items():
                key = f"{c.graph}/{name}"
                out[key] = max(out.get(key, 0.0), d)
        return out

    @property
    def max_abs_diff(self) -> float:
        """The largest difference of any output in any case (0.0 for no cases)."""
        return max(self.max_abs_diff_per_output.values(), default=0.0)

    def failures(self) -> list[tuple[str, str, str, float]]:
        """(graph, case, output, diff) over the tolerance; empty when none is enforced."""
        if self.tolerance is None:
            return []
        return [
            (c.graph, c.case, name, d)
            for c in self.cases
            for name, d in c.diffs.items()
            if not d <= self.tolerance
        ]

    @property
    def passed(self) -> bool | None:
        return None if self.tolerance is None else not self.failures()

    def table(self) -> str:
        """One line per graph, case and output, failing lines marked."""
        lines = [f"{'graph':<14}{'case':<24}{'output':<14}{'max|Δ|':>10}"]
        for c in self.cases:
            for name, d in c.diffs.items():
                bad = self.tolerance is not None and not d <= self.tolerance
                mark = "  FAIL" if bad else ""
                lines.append(f"{c.graph:<14}{c.case:<24}{name:<14}{d:>10.2e}{mark}")
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {
            "metric": metric_name(self.precision),
            "precision": self.precision,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "max_abs_diff": _json_number(self.max_abs_diff),
            "max_abs_diff_per_output": {
                k: _json_number(v) for k, v in self.max_abs_diff_per_output.items()
            },
            "cases": [
                {
                    "graph": c.graph,
                    "case": c.case,
                    "max_abs_diff": {k: _json_number(v) for k, v in c.diffs.items()},
                }
                for c in self.cases
            ],
        }


class ParityError(RuntimeError):
    """An exported graph disagrees with PyTorch beyond the tolerance.

    `report` holds every number; the message lists the failing cases and the overall
    table, so the log of a failed export says exactly what broke.
    """

    def __init__(self, report: ParityReport) -> None:
        self.report = report
        fails = report.failures()
        worst = "\n".join(
            f"  {g} / {case} / {out}: max|Δ| = {d:.3e}" for g, case, out, d in fails[:20]
        )
        more = f"\n  … and {len(fails) - 20} more" if len(fails) > 20 else ""
        super().__init__(
            f"ONNX parity check failed ({report.precision}): {len(fails)} output(s) differ "
            f"from PyTorch by more than {report.tolerance:g} (max {report.max_abs_diff:.3e})"
            f":\n{worst}{more}\n\nall cases:\n{report.table()}"
        )


def torch_outputs(module: torch.nn.Module, cases: Sequence[InputCase]) -> list[list[np.ndarray]]:
    """The PyTorch module's outputs for each case, as float32 arrays in output order."""
    results = []
    with torch.inference_mode():
        for case in cases:
            out = module(*case.feeds.values())
            outs = list(out) if isinstance(out, tuple) else [out]
            results.append([o.float().cpu().numpy() for o in outs])
    return results


def compare_session(
    graph: str,
    session: ort.InferenceSession,
    cases: Sequence[InputCase],
    references: Sequence[Sequence[np.ndarray]],
) -> list[CaseResult]:
    """Runs `session` on each case and measures each output against the reference."""
    names = [o.name for o in session.get_outputs()]
    results = []
    for case, want in zip(cases, references, strict=True):
        got = session.run(names, {k: v.numpy() for k, v in case.feeds.items()})
        diffs = {n: max_abs_diff(g, w) for n, g, w in zip(names, got, want, strict=True)}
        results.append(CaseResult(graph, case.name, diffs))
    return results


def enforce(report: ParityReport) -> ParityReport:
    """Raises ParityError when the report has a tolerance and fails it."""
    if report.passed is False:
        raise ParityError(report)
    return report
