"""Evaluate a model and write its report: the one routine behind `tipsv2 eval` and the
pipeline's evaluate step.

The caller opens the model, the tokenizer and the dataset views (the CLI reads many
layouts and model formats; the step reads a training run's final model and its own
dataset); this module runs the protocols of `tipsv2_core.eval` on them, keeps the first
zero-shot predictions for the report, and writes the self-contained HTML report with the
lineage the caller knows. Metrics are named `eval/<task>/<dataset>/<metric>`
(docs/architecture.md, "Metric names").
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tipsv2_core.eval.readers.resolve import EvalViews

REPORT_SAMPLES = 6  # zero-shot segmentation predictions shown in a report
PCA_SAMPLES = 3  # images whose patch features a report shows as PCA colours

Prediction = Callable[[str, Any], None]


def evaluate_and_report(
    model: Any,
    tokenizer: Any,
    views: EvalViews,
    tasks: Sequence[str],
    *,
    where: str,
    train_views: EvalViews | None = None,
    train_where: str = "",
    image_size: int = 224,
    eval_size: int = 448,
    mode: str = "slide",
    device: str | None = None,
    progress: bool = False,
    on_prediction: Prediction | None = None,
    report: str | os.PathLike[str] | None = None,
    subject: str = "Evaluation",
    lineage: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
) -> dict[str, float]:
    """Runs each task of `tasks` on `views` and returns the namespaced metrics.

    where / train_where: the dataset as the user named it, for errors about a view the
        layout lacks. train_views: the training split for kNN and the linear probe.
    on_prediction: also called with every zero-shot segmentation prediction (the CLI's
        `--save-predictions`).
    report: where to write the HTML report (None: none), titled "<subject> on <dataset>",
        with `lineage` (checkpoint, variant, data version, ...) and the training `history`.
    """
    from tipsv2_core.eval.protocol import run_evaluation

    kept: dict[str, Any] = {}

    def predicted(key: str, pred: Any) -> None:
        if on_prediction is not None:
            on_prediction(key, pred)
        if len(kept) < REPORT_SAMPLES:
            kept[key] = pred

    metrics: dict[str, float] = {}
    for task in tasks:
        opts: dict[str, Any] = {"image_size": image_size}
        if task == "zeroshot_seg":
            opts = {"mode": mode, "eval_size": eval_size, "on_prediction": predicted}
        if train_views is not None and task in ("knn", "linear_seg"):
            opts["train"] = train_views.view_for(task, train_where or where)
        dataset = views.view_for(task, where)
        metrics |= run_evaluation(
            task, model, tokenizer, dataset, device=device, progress=progress, **opts
        )
    if report is not None:
        _write_report(
            report, model, views, metrics, kept, subject, dict(lineage or {}), history, image_size
        )
    return metrics


def checkpoint_lineage(checkpoint: str | os.PathLike[str], variant: str) -> dict[str, Any]:
    """What a report says about the model: its checkpoint, variant, and the step, data
    version, commit and dirty flag its `meta.json` records (None for an official npz pair
    or an ONNX export, which have no meta.json)."""
    from tipsv2_core.checkpoint import read_meta
    from tipsv2_core.export import is_onnx_export
    from tipsv2_core.models.io import is_native

    ckpt = Path(checkpoint)
    meta = read_meta(ckpt) if is_native(ckpt) and not is_onnx_export(ckpt) else {}
    return {
        "checkpoint": str(ckpt),
        "variant": variant,
        "step": meta.get("step"),
        "data_version": meta.get("data_version"),
        "git_sha": meta.get("git_sha"),
        "git_dirty": meta.get("git_dirty"),
        "config": meta.get("config"),
    }


def run_history(checkpoint: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """metrics.jsonl of the run a checkpoint came from (run/final or run/checkpoints/step_N)."""
    ckpt = Path(checkpoint)
    for run in (ckpt.parent, ckpt.parent.parent):
        path = run / "metrics.jsonl"
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


def _write_report(
    path: str | os.PathLike[str],
    model: Any,
    views: EvalViews,
    metrics: dict[str, float],
    kept: Mapping[str, Any],
    subject: str,
    lineage: dict[str, Any],
    history: Sequence[Mapping[str, Any]],
    image_size: int,
) -> None:
    from tipsv2_core.eval.predictions import palette
    from tipsv2_core.eval.report import ReportData, colour_labels, write_report
    from tipsv2_core.eval.visualize import pca_features

    seg, rows = views.seg, []
    colours = palette(len(seg.class_names)) if seg is not None else None
    samples = {s.key: s for s in seg.samples} if seg is not None else {}
    for key, pred in kept.items():
        image = samples[key].load_image()
        truth = colour_labels(samples[key].load_label(), colours)
        rows.append((key, image, truth, colour_labels(pred.astype("int64"), colours)))
    first = next(v for v in (views.seg, views.captions, views.classes) if v is not None)
    shown = first.samples[:PCA_SAMPLES]
    pca = [(s.key, pca_features(model, s.load_image(), image_size)) for s in shown]
    data = ReportData(
        title=f"{subject} on {first.name}",
        metrics=metrics,
        lineage=lineage,
        predictions=rows,
        pca=pca,
        history=[dict(row) for row in history],
        legend=[]
        if seg is None or colours is None
        else [
            *((n, tuple(int(c) for c in colours[i])) for i, n in enumerate(seg.class_names)),
            ("ignored", (0, 0, 0)),
        ],
    )
    write_report(data, os.fspath(path))
