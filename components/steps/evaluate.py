"""The evaluation stage of the pipeline: evaluate each trained model (teacher and
students) and pick the candidate to release."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tipsv2_core.uri import strip_file_scheme

EVAL_TASKS = ("zeroshot_seg", "retrieval")


def evaluate_model(
    model_dir: str,
    dataset: str,
    report: str,
    *,
    role: str = "teacher",
    tasks: Sequence[str] = EVAL_TASKS,
    limit: int | None = 50,
    image_size: int = 224,
    eval_size: int = 224,
    pipeline_run_id: str | None = None,
    version: str = "",
    experiment: str = "tipsv2",
    track: bool = True,
    training_group: str = "",
) -> dict[str, Any]:
    """Evaluates the final model of the training run `model_dir` on the dataset's
    evaluation split; writes the HTML report at `report` and returns
    `{"metrics": {eval/<task>/<dataset>/<metric>: value}, "variant", ...}`.

    Metrics go to MLflow as the step `evaluate/<role>` under the pipeline's parent run.
    The teacher's evaluation also scores the controls (tipsv2_core/eval/controls.py): a
    random-init encoder of the same variant, returned as "random_init", and the
    colour-only oracle, as "colour_oracle", so a summary shows what training gained.
    training_group: the model's own training run group (a cached step's; its model
    artifact records it), moved under the pipeline's parent run here
    (components.tracking.adopt_group), so one pipeline run is one tree in MLflow.
    """
    from components.evaluation import checkpoint_lineage, evaluate_and_report, run_history
    from tipsv2_core.eval.readers.resolve import open_eval_views
    from tipsv2_core.models.io import load_model
    from tipsv2_core.text import Tokenizer

    t0 = time.perf_counter()
    run_dir = Path(strip_file_scheme(model_dir))
    checkpoint = run_dir / "final"
    views = open_eval_views(strip_file_scheme(dataset), limit=limit or None)  # 0: all
    model = load_model(str(checkpoint))
    tokenizer = Tokenizer(run_dir / "tokenizer.model")
    lineage = checkpoint_lineage(checkpoint, model.variant.name)
    lineage["data_version"] = lineage["data_version"] or version
    lineage["pipeline_run_id"] = pipeline_run_id
    metrics = evaluate_and_report(
        model,
        tokenizer,
        views,
        tasks,
        where="eval",
        image_size=image_size,
        eval_size=eval_size,
        mode="whole",
        report=strip_file_scheme(report),
        subject=f"{role}: {model.variant.name}",
        lineage=lineage,
        history=run_history(checkpoint),
    )
    options: dict[str, dict[str, Any]] = {
        task: {"mode": "whole", "eval_size": eval_size}
        if task == "zeroshot_seg"
        else {"image_size": image_size}
        for task in tasks
    }
    controls = _controls(model.variant.name, tokenizer, views, tasks, options, dataset, role)
    if track:
        from components.datasets import dataset_input
        from components.tracking import Tracker, adopt_group

        name = f"eval-{role}" if role == "teacher" else f"eval-{role}-{model.variant.name}"
        with Tracker(
            f"evaluate/{role}",
            run_name=name,  # eval-teacher, eval-student-nano14
            pipeline_run_id=pipeline_run_id or None,
            experiment=experiment,
            data_version=version or None,
            checkpoint_uri=str(checkpoint),
            params={"variant": model.variant.name, "tasks": ",".join(tasks), "limit": limit},
            datasets=[dataset_input(dataset, lineage["data_version"] or "", "evaluation")],
            system_metrics=True,
            background=False,
        ) as tracker:
            tracker.log_metrics(metrics)
            if Path(strip_file_scheme(report)).is_file():
                tracker.log_file(strip_file_scheme(report), "reports")
        if pipeline_run_id and training_group:
            adopt_group(pipeline_run_id, training_group, experiment=experiment)
    return {
        "role": role,
        "variant": model.variant.name,
        "metrics": metrics,
        **controls,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _controls(
    variant: str,
    tokenizer: Any,
    views: Any,
    tasks: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    dataset: str,
    role: str,
) -> dict[str, dict[str, float]]:
    """The teacher's controls: {"random_init": metrics, "colour_oracle": metrics}, scored
    with the same evaluator options as the model (`options[task]`)."""
    from tipsv2_core.eval.controls import colour_oracle_miou, random_init_metrics
    from tipsv2_core.eval.readers.resolve import open_train_views

    if role != "teacher":
        return {}
    out = {"random_init": random_init_metrics(variant, tokenizer, views, tasks, options)}
    if "zeroshot_seg" in tasks and views.seg is not None:
        try:
            train = open_train_views(strip_file_scheme(dataset), "auto", None, None).seg
        except (FileNotFoundError, ValueError):
            train = None  # a layout without a training split: no oracle to fit
        if train is not None:
            out["colour_oracle"] = colour_oracle_miou(train, views.seg)
    return out


def _primary(metrics: Mapping[str, float], primary_metric: str) -> str:
    """The metric that ranks models: as given, else the only zero-shot mIoU (the paper's
    headline metric; the promotion gate uses the same default)."""
    if primary_metric:
        return primary_metric
    found = sorted(k for k in metrics if k.startswith("eval/zeroshot_seg/") and k.endswith("/miou"))
    if len(found) != 1:
        raise ValueError(f"give a primary metric: found {len(found)} zero-shot mIoU metrics")
    return found[0]


def select_candidate(
    candidates: Sequence[Mapping[str, Any]], primary_metric: str = ""
) -> dict[str, Any]:
    """The candidate (`{"name", "model_dir", "metrics"}`) that scores best on the primary
    metric; ties go to the earlier one (the teacher comes first)."""
    if not candidates:
        raise ValueError("no candidates to select from")
    metric = _primary(candidates[0]["metrics"], primary_metric)
    scored = []
    for i, c in enumerate(candidates):
        value = c["metrics"].get(metric)
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"{c['name']}: no finite value for {metric}")
        scored.append((-float(value), i, c))
    _, _, best = min(scored)
    return {
        "name": best["name"],
        "model_dir": best["model_dir"],
        "metrics": dict(best["metrics"]),
        "primary_metric": metric,
        "ranking": {c["name"]: float(c["metrics"][metric]) for c in candidates},
    }


def copy_model(model_dir: str, out: str) -> None:
    """Copies a training run's final model and tokenizer (not its checkpoints) to `out`."""
    src = Path(strip_file_scheme(model_dir))
    dst = Path(strip_file_scheme(out))
    shutil.copytree(src / "final", dst / "final", dirs_exist_ok=True)
    shutil.copyfile(src / "tokenizer.model", dst / "tokenizer.model")
    if (src / "metrics.jsonl").is_file():
        shutil.copyfile(src / "metrics.jsonl", dst / "metrics.jsonl")
