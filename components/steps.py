"""Glue of the Kubeflow pipeline (`pipelines/dag.py`): one plain function per DAG step.

Each `@dsl.component` in the DAG is a few lines that import one function from here and
call it with the artifact paths KFP hands it, so everything a step does can be read and
tested without KFP (this module must not import kfp: DESIGN §3). The functions return
JSON-ready dicts; the component copies what KFP should show (metrics, metadata) onto its
output artifacts.

Lineage: steps that KFP may serve from its cache (data, tokenizer, training) take no
pipeline run id, or every run would miss the cache; the uncached steps after them
(evaluation, registration, promotion, the exit task) record the run under its MLflow
parent run (components.tracking).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "check_promotion_rules",
    "data_version",
    "evaluate_model",
    "export_model",
    "finish_pipeline_run",
    "gate_decision",
    "plan_students",
    "prepare_dataset",
    "promote_model",
    "register_model",
    "select_candidate",
    "stop_pipeline",
    "train_model",
    "validate_dataset",
]

EVAL_TASKS = ("zeroshot_seg", "retrieval")
REPORT_SAMPLES = 4  # prediction rows in an evaluation report


def _local(path: str | os.PathLike[str]) -> str:
    return os.fspath(path).removeprefix("file://")


# ---------------------------------------------------------------------------------------
# data


def prepare_dataset(
    out: str,
    sources: Sequence[str],
    *,
    synth_images: int = 4000,
    image_size: int = 112,
    seed: int = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Curates `sources` into a dataset at `out`, or generates a synthetic one when there
    are none (the embedded default: no downloads). Returns counts for the run summary."""
    t0 = time.perf_counter()
    if sources:
        from components.curate import curate

        result = curate(list(sources), out, workers=workers, progress=False)
        doc = {
            "origin": "curated",
            "num_samples": result.num_samples,
            "num_rejected": result.num_rejected,
            "counts": dict(result.counts),
        }
    else:
        from tipsv2_core.data.layout import read_card
        from tipsv2_core.data.synth_dataset import write_synthetic_dataset

        path = write_synthetic_dataset(
            out, synth_images, image_size=image_size, seed=seed, workers=1, progress=False
        )
        card = read_card(path)
        doc = {
            "origin": "synthetic",
            "num_samples": int(card["num_samples"]),
            "num_rejected": 0,
            "counts": dict(card["counts"]),
        }
    return {**doc, "seconds": round(time.perf_counter() - t0, 3)}


def validate_dataset(
    data: str, out: str, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The Great Expectations gate on `data`; validation.json/html go into the folder `out`.

    Returns `passed`, the human `summary` (every failed check with examples), the counts
    the gate saw and the report path; a failed gate is a result here, not an exception:
    the DAG branches on it and stops in `stop_pipeline`.
    """
    from components.validate import HTML_FILE, ValidationConfig, validate

    t0 = time.perf_counter()
    result = validate(data, ValidationConfig.from_dict(config or {}), out=out)
    return {
        "passed": bool(result.success),
        "summary": result.message(),
        "failures": [c.describe() for c in result.failures],
        "num_checks": len(result.checks),
        "num_samples": int(result.stats.get("num_samples", 0)),
        "counts": {str(k): int(v) for k, v in (result.stats.get("splits") or {}).items()},
        "report": str(Path(out) / HTML_FILE),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def stop_pipeline(summary: str) -> NoReturn:
    """The failing branch of the validation gate: raises with the GX summary, so the run
    stops (and says why) before anything is versioned or trained."""
    from components.validate import ValidationFailed

    raise ValidationFailed(summary)


def data_version(path: str) -> str:
    """The dataset's DVC md5 when DVC tracks it, else the sha256 of its manifest.

    The same rule as `tipsv2 train` (pipelines/cli/train.py `data_version_of`), repeated
    here because steps must not import the CLI layer. A pipeline's dataset lives in the
    pipeline root, which DVC does not track, so there it is the manifest's content hash:
    equal manifests, equal version, whichever run produced them.
    """
    from components.versioning import VersioningError, dataset_version

    try:
        return dataset_version(path)
    except (VersioningError, OSError, ValueError):
        manifest = Path(_local(path)) / "manifest.parquet"
        if not manifest.is_file():
            raise ValueError(f"{path}: no manifest.parquet; not a dataset") from None
        return "manifest-sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


def plan_students(recipe: str, student_variants: Sequence[str]) -> list[str]:
    """The student variants to distil, checked before any work: a typo in a variant or
    recipe name fails the run in seconds instead of after pretraining."""
    from tipsv2_core.models.variants import VARIANTS
    from tipsv2_core.recipes import get_recipe

    get_recipe(recipe)  # raises ValueError with the known names
    students = list(dict.fromkeys(str(v) for v in student_variants))  # unique, in order
    unknown = [v for v in students if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown student variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return students


# ---------------------------------------------------------------------------------------
# training


def _cpus(cpu_limit: str) -> float:
    """Kubernetes CPU quantity ("2", "500m") -> cores; what Ray may use inside the pod
    (os.cpu_count() would report the node's cores, not the pod's limit)."""
    text = str(cpu_limit).strip()
    value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    if not value > 0:
        raise ValueError(f"cpu limit must be positive, got {cpu_limit!r}")
    return value


def train_model(
    kind: str,
    out: str,
    data: str,
    tokenizer: str,
    *,
    recipe: str = "demo",
    version: str = "",
    steps: int = 0,
    batch_size: int = 0,
    overrides: Sequence[str] = (),
    teacher: str | None = None,
    student_variant: str | None = None,
    workers: int = 1,
    cpu_limit: str = "2",
    gpus: int = 0,
    experiment: str = "tipsv2",
    track: bool = True,
    ray_address: str = "",
    shared_dir: str = "",
) -> dict[str, Any]:
    """Pretrains (`kind="pretrain"`) or distils (`"distill"`) into the run directory `out`
    on Ray Train; the final model is `out/final`, the tokenizer `out/tokenizer.model`.

    steps / batch_size: override the recipe's first stage (0: the recipe's), e.g. for a
    smoke run; overrides: more `key=value` config overrides. Ray gets the pod's CPU limit
    and `gpus` GPUs in all (spread over `workers`).

    ray_address: empty to start Ray in this process (the pod); else the Jobs API of an
    existing cluster (`http://tipsv2-ray-head-svc:8265`), where the run goes as a Ray job
    with its inputs staged under `shared_dir`, a folder every Ray node mounts
    (components.ray_jobs).
    """
    from components.ray_train import RayTrainSpec, train_on_ray
    from tipsv2_core.config import apply_overrides, validate
    from tipsv2_core.recipes import get_recipe

    if kind not in ("pretrain", "distill"):
        raise ValueError(f"kind must be pretrain or distill, got {kind!r}")
    distill = kind == "distill"
    t0 = time.perf_counter()
    cfg = get_recipe(recipe if not distill else f"distill_{recipe}", distill=distill)
    cfg.data.path = _local(data)
    cfg.data.tokenizer = _local(tokenizer)
    cfg.run.data_version = version
    sets = list(overrides)
    if steps:
        sets.append(f"stages.0.steps={steps}")
    if batch_size:
        sets.append(f"stages.0.batch_size={batch_size}")
    if distill:
        if not teacher:
            raise ValueError("distillation needs a teacher checkpoint")
        cfg.distill.teacher = _local(teacher)
        if student_variant:
            cfg.model.variant = student_variant
    cfg = validate(apply_overrides(cfg, sets))  # a bad override fails here, before any job
    if ray_address:
        return _train_as_ray_job(
            kind, out, data, tokenizer, cfg.recipe, sets, version, teacher, cfg.model.variant,
            workers=workers, gpus=gpus, experiment=experiment, track=track,
            ray_address=ray_address, shared_dir=shared_dir, t0=t0,
        )  # fmt: skip
    tracking: dict[str, Any] = {}
    group = ""
    if track:
        import uuid

        from components.settings import configure

        # A cached step cannot know the pipeline run (its id would change every cache
        # key), so the training run is a pipeline of one step with its own parent run,
        # ended below; its id is recorded on the model artifact.
        group = f"{kind}-{uuid.uuid4().hex[:12]}"
        tracking = {
            "step": kind if not distill else f"distill/{cfg.model.variant}",
            "experiment": experiment,
            "tracking_uri": configure().tracking_uri,
            "checkpoint_uri": str(Path(_local(out)).resolve() / "final"),
            "pipeline_run_id": group,
        }
    cpus = _cpus(cpu_limit)
    spec = RayTrainSpec(
        workers=workers,
        use_gpu=gpus > 0,
        gpus_per_worker=gpus / workers if gpus > 0 else 1.0,
        cpus_per_worker=max(cpus / workers, 0.5) if workers > 1 else 1.0,
        tracking=tracking,
    )
    status = "FAILED"
    try:
        result = train_on_ray(cfg, _local(out), kind, spec)  # type: ignore[arg-type]
        status = "FINISHED"
    finally:
        if group:
            from components.tracking import end_pipeline_run

            end_pipeline_run(
                group, status, experiment=experiment, tracking_uri=tracking["tracking_uri"]
            )
    losses = {
        k: float(v)
        for k, v in result.metrics.items()
        if k.endswith("loss") and isinstance(v, int | float) and math.isfinite(v)
    }
    return {
        "kind": kind,
        "variant": cfg.model.variant,
        "recipe": cfg.recipe,
        "steps": result.steps,
        "final": str(result.final),
        "data_version": version,
        "mlflow_pipeline_run_id": group,
        "ray_startup_s": round(result.startup_s, 2),
        "fit_s": round(result.fit_s, 2),
        "seconds": round(time.perf_counter() - t0, 3),
        **losses,
    }


def _train_as_ray_job(
    kind: str,
    out: str,
    data: str,
    tokenizer: str,
    recipe: str,
    sets: Sequence[str],
    version: str,
    teacher: str | None,
    variant: str,
    *,
    workers: int,
    gpus: int,
    experiment: str,
    track: bool,
    ray_address: str,
    shared_dir: str,
    t0: float,
) -> dict[str, Any]:
    """`train_model` on an existing Ray cluster: the same run as the CLI would start,
    submitted through the Jobs API (components.ray_jobs)."""
    from components.ray_jobs import RayJobTarget, train_as_ray_job

    args = ["--recipe", recipe, "--workers", str(workers), "--experiment", experiment]
    for item in [*sets, *([f"run.data_version={version}"] if version else [])]:
        args += ["--set", item]
    if kind == "distill":
        args += ["--student-variant", variant]
    if gpus > 0:
        args += ["--gpus-per-worker", str(gpus / workers)]
    if not track:
        args.append("--no-track")
    result = train_as_ray_job(
        kind,  # type: ignore[arg-type]
        _local(out),
        _local(data),
        _local(tokenizer),
        args,
        RayJobTarget(ray_address, shared_dir),
        teacher=_local(teacher) if teacher else None,
        on_event=print,
    )
    summary = result.summary
    losses = {
        k: float(v)
        for k, v in summary.items()
        if k.endswith("loss") and isinstance(v, int | float) and math.isfinite(v)
    }
    return {
        "kind": kind,
        "variant": variant,
        "recipe": recipe,
        "steps": int(summary.get("steps", 0)),
        "final": str(Path(_local(out)) / "final"),
        "data_version": version,
        "ray_job_id": result.job_id,
        "ray_address": ray_address,
        "seconds": round(time.perf_counter() - t0, 3),
        **losses,
    }


# ---------------------------------------------------------------------------------------
# evaluation


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
) -> dict[str, Any]:
    """Evaluates the final model of the training run `model_dir` on the dataset's
    evaluation split; writes the HTML report at `report` and returns
    `{"metrics": {eval/<task>/<dataset>/<metric>: value}, "variant", ...}`.

    Metrics go to MLflow as the step `evaluate/<role>` under the pipeline's parent run.
    The teacher's evaluation also scores the controls (tipsv2_core/eval/controls.py): a
    random-init encoder of the same variant, returned as "random_init", and the
    colour-only oracle, as "colour_oracle", so a summary shows what training gained.
    """
    from tipsv2_core.checkpoint import read_meta
    from tipsv2_core.eval.predictions import palette
    from tipsv2_core.eval.protocol import run_evaluation
    from tipsv2_core.eval.readers.resolve import open_eval_views
    from tipsv2_core.eval.report import ReportData, colour_labels, write_report
    from tipsv2_core.eval.visualize import pca_features
    from tipsv2_core.models.io import load_model
    from tipsv2_core.text import Tokenizer

    t0 = time.perf_counter()
    run_dir = Path(_local(model_dir))
    checkpoint = run_dir / "final"
    views = open_eval_views(_local(dataset), limit=limit or None)  # 0 or None: every sample
    model = load_model(str(checkpoint))
    tokenizer = Tokenizer(run_dir / "tokenizer.model")
    kept: dict[str, Any] = {}

    def keep(key: str, pred: Any) -> None:
        if len(kept) < REPORT_SAMPLES:
            kept[key] = pred

    options: dict[str, dict[str, Any]] = {
        task: {"mode": "whole", "eval_size": eval_size}
        if task == "zeroshot_seg"
        else {"image_size": image_size}
        for task in tasks
    }
    metrics: dict[str, float] = {}
    for task in tasks:
        opts = options[task] | ({"on_prediction": keep} if task == "zeroshot_seg" else {})
        metrics |= run_evaluation(
            task, model, tokenizer, views.view_for(task, "eval"), progress=False, **opts
        )
    controls = _controls(model.variant.name, tokenizer, views, tasks, options, dataset, role)
    meta = read_meta(checkpoint)
    seg = views.seg
    rows = []
    if seg is not None:
        colours = palette(len(seg.class_names))
        samples = {s.key: s for s in seg.samples}
        for key, pred in kept.items():
            truth = colour_labels(samples[key].load_label(), colours)
            rows.append(
                (
                    key,
                    samples[key].load_image(),
                    truth,
                    colour_labels(pred.astype("int64"), colours),
                )
            )
    first = next(v for v in (views.seg, views.captions, views.classes) if v is not None)
    pca = [(s.key, pca_features(model, s.load_image(), image_size)) for s in first.samples[:2]]
    write_report(
        ReportData(
            title=f"{role}: {model.variant.name} on {first.name}",
            metrics=metrics,
            lineage={
                "checkpoint": str(checkpoint),
                "variant": model.variant.name,
                "step": meta.get("step"),
                "data_version": meta.get("data_version") or version,
                "git_sha": meta.get("git_sha"),
                "pipeline_run_id": pipeline_run_id,
            },
            predictions=rows,
            pca=pca,
            history=_history(run_dir),
        ),
        _local(report),
    )
    if track:
        from components.tracking import Tracker

        with Tracker(
            f"evaluate/{role}",
            pipeline_run_id=pipeline_run_id or None,
            experiment=experiment,
            data_version=version or None,
            checkpoint_uri=str(checkpoint),
            params={"variant": model.variant.name, "tasks": ",".join(tasks), "limit": limit},
            background=False,
        ) as tracker:
            tracker.log_metrics(metrics)
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
    """The teacher's controls: {"random_init": metrics, "colour_oracle": metrics}."""
    from tipsv2_core.eval.controls import colour_oracle_miou, random_init_metrics
    from tipsv2_core.eval.readers.resolve import open_train_views

    if role != "teacher":
        return {}
    out = {"random_init": random_init_metrics(variant, tokenizer, views, tasks, options)}
    if "zeroshot_seg" in tasks and views.seg is not None:
        try:
            train = open_train_views(_local(dataset), "auto", None, None).seg
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
    src = Path(_local(model_dir))
    dst = Path(_local(out))
    shutil.copytree(src / "final", dst / "final", dirs_exist_ok=True)
    shutil.copyfile(src / "tokenizer.model", dst / "tokenizer.model")
    if (src / "metrics.jsonl").is_file():
        shutil.copyfile(src / "metrics.jsonl", dst / "metrics.jsonl")


# ---------------------------------------------------------------------------------------
# export, registry, promotion


def export_model(model_dir: str, out: str, image_sizes: Sequence[int] = (224,)) -> dict[str, Any]:
    """ONNX export of `model_dir/final` with its tokenizer; the parity check against
    PyTorch is part of the export (ParityError: nothing is written)."""
    from tipsv2_core.export import export_checkpoint

    t0 = time.perf_counter()
    run_dir = Path(_local(model_dir))
    result = export_checkpoint(
        str(run_dir / "final"),
        _local(out),
        image_sizes=list(image_sizes),
        tokenizer=str(run_dir / "tokenizer.model"),
    )
    return {
        "path": str(result.path),
        "variant": result.variant,
        "max_abs_diff": float(result.max_abs_diff),
        "files": result.files,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def register_model(
    export_dir: str,
    name: str,
    metrics: Mapping[str, float],
    *,
    version: str = "",
    pipeline_run_id: str | None = None,
    experiment: str = "tipsv2",
) -> dict[str, Any]:
    """Registers the export as a new version of `name` (alias `challenger`) with its
    evaluation metrics, measured on the same dataset version it was trained on."""
    from components.registry import register_export
    from components.settings import configure

    t0 = time.perf_counter()
    configure()
    reg = register_export(
        _local(export_dir),
        name,
        dict(metrics),
        eval_data_version=version or None,
        data_version=version or None,
        pipeline_run_id=pipeline_run_id or None,
        experiment=experiment,
    )
    return {
        "name": reg.name,
        "version": reg.version,
        "run_id": reg.run_id,
        "tracking_uri": reg.tracking_uri,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _gate_config(primary_metric: str, rules: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The gate's config: the pipeline's promotion rules (components.promote.GateConfig
    fields) with the candidate's primary metric; None: the gate's defaults."""
    doc = dict(rules or {})
    if primary_metric:
        doc["primary_metric"] = primary_metric
    return doc or None


def check_promotion_rules(rules: Mapping[str, Any] | None) -> None:
    """Raises ValueError naming the problem when `rules` are not valid gate settings
    (unknown keys, bad margins): checked before any work, not after training."""
    from components.promote import GateConfig, PromotionError

    doc = _gate_config("", rules)
    if doc is None:
        return
    try:
        GateConfig.from_dict({"primary_metric": "checked-later", **doc})
    except (PromotionError, TypeError, ValueError) as e:
        raise ValueError(f"promotion rules {dict(rules or {})}: {e}") from None


def gate_decision(
    name: str, version: str, primary_metric: str = "", rules: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Whether `version` of `name` passes the promotion gate against the current champion
    (parity, primary metric, secondary margins, same eval data); reads only, so the DAG
    can branch on it. rules: GateConfig fields (min_improvement, secondary, ...)."""
    from components.promote import evaluate_gate, resolve_config
    from components.registry import CHAMPION, alias_version, client_for, version_info
    from components.settings import configure

    configure()
    client = client_for()
    challenger = version_info(client, name, version)
    champion_version = alias_version(client, name, CHAMPION)
    champion = None
    if champion_version is not None and champion_version != str(version):
        champion = version_info(client, name, champion_version)
    config = resolve_config(_gate_config(primary_metric, rules), challenger)
    gate = evaluate_gate(challenger, champion, config)
    return {
        "passed": gate.passed,
        "reasons": gate.reasons(),
        "champion": champion_version,
        "primary_metric": config.primary_metric,
    }


def promote_model(
    name: str, version: str, primary_metric: str = "", rules: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Moves `champion` to `version` if the gate passes (and records the decision)."""
    from components.promote import promote
    from components.settings import configure

    configure()
    decision = promote(name, version, _gate_config(primary_metric, rules))
    return {
        "action": decision.action,
        "champion_before": decision.champion_before,
        "champion_after": decision.champion_after,
        "reasons": list(decision.reasons),
    }


def finish_pipeline_run(
    pipeline_run_id: str, state: str, error: str = "", *, experiment: str = "tipsv2"
) -> dict[str, Any]:
    """The exit task: ends the run's MLflow parent with the pipeline's final state.

    A run stopped early (e.g. at the validation gate) may have no parent yet; one is
    created, so every pipeline run leaves a record with its status and error.
    """
    from components.registry import experiment_id
    from components.settings import configure
    from components.tracking import client_for, find_or_create_parent

    uri = configure().tracking_uri
    client = client_for(uri)
    parent = find_or_create_parent(client, experiment_id(client, experiment, uri), pipeline_run_id)
    status = "FINISHED" if state.upper() in ("SUCCEEDED", "SUCCESS", "FINISHED") else "FAILED"
    client.set_tag(parent, "pipeline_state", state)
    if error:
        client.set_tag(parent, "pipeline_error", error[:5000])
    client.set_terminated(parent, status)
    return {"parent_run_id": parent, "status": status, "tracking_uri": uri}
