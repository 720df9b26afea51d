"""The training stage of the pipeline: pretraining and distillation on Ray Train, in the
step's own pod or as a Ray job on an existing cluster (components.ray_jobs)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tipsv2_core.uri import strip_file_scheme


def _cpus(cpu_limit: str) -> float:
    """Kubernetes CPU quantity ("2", "500m") -> cores; what Ray may use inside the pod
    (os.cpu_count() would report the node's cores, not the pod's limit)."""
    text = str(cpu_limit).strip()
    value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    if not value > 0:
        raise ValueError(f"cpu limit must be positive, got {cpu_limit!r}")
    return value


def worker_cpus(cpus: float, workers: int) -> float:
    """The step's CPU limit shared out between its Ray workers (at least half a core
    each). Each worker runs as many torch threads as its share: one worker gets every
    core, as `tipsv2 train` does (on one thread of two, 800 demo steps took 567 s, not 496)."""
    return max(cpus / workers, 0.5)


def _losses(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.endswith("loss") and isinstance(v, int | float) and math.isfinite(v)
    }


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
    from components.datasets import dataset_input
    from components.progress import ProgressReporter
    from components.ray_train import RayTrainSpec, train_on_ray
    from components.run_guard import guarded_run
    from tipsv2_core.config import apply_overrides, validate
    from tipsv2_core.recipes import get_recipe
    from tipsv2_core.train.distill_arch import text_from_teacher_only_where_it_fits

    if kind not in ("pretrain", "distill"):
        raise ValueError(f"kind must be pretrain or distill, got {kind!r}")
    distill = kind == "distill"
    t0 = time.perf_counter()
    cfg = get_recipe(recipe if not distill else f"distill_{recipe}", distill=distill)
    cfg.data.path = strip_file_scheme(data)
    cfg.data.tokenizer = strip_file_scheme(tokenizer)
    cfg.run.data_version = version
    sets = list(overrides)
    if steps:
        sets.append(f"stages.0.steps={steps}")
    if batch_size:
        sets.append(f"stages.0.batch_size={batch_size}")
    if distill:
        if not teacher:
            raise ValueError("distillation needs a teacher checkpoint")
        cfg.distill.teacher = strip_file_scheme(teacher)
        if student_variant:
            cfg.model.variant = student_variant
        text_from_teacher_only_where_it_fits(cfg, get_recipe(recipe).model.variant)
    # A bad override fails here, before any job; the Ray job gets this very config.
    cfg = validate(apply_overrides(cfg, sets))
    if ray_address:
        from components.ray_jobs import RayJobTarget, train_as_ray_job
        from components.train_entry import JobOptions

        job = train_as_ray_job(
            kind,  # type: ignore[arg-type]
            strip_file_scheme(out),
            cfg,
            RayJobTarget(ray_address, shared_dir),
            JobOptions(workers, gpus / workers if gpus > 0 else 0.0, experiment, track),
            on_event=print,
        )
        return {
            "kind": kind,
            "variant": cfg.model.variant,
            "recipe": cfg.recipe,
            "steps": int(job.summary.get("steps", 0)),
            "final": str(Path(strip_file_scheme(out)) / "final"),
            "data_version": version,
            "ray_job_id": job.job_id,
            "ray_address": ray_address,
            "seconds": round(time.perf_counter() - t0, 3),
            **_losses(job.summary),
        }
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
            "run_name": f"{kind}-{cfg.model.variant}",  # pretrain-nano14, distill-nano14
            "experiment": experiment,
            "tracking_uri": configure().tracking_uri,
            "checkpoint_uri": str(Path(strip_file_scheme(out)).resolve() / "final"),
            "pipeline_run_id": group,
            "datasets": [dataset_input(data, version, "training")],
            "system_metrics": True,
            # MLflow logs a sample only once its interval has passed: at 5 s a smoke run's
            # training (a few seconds) would end with no system metrics at all.
            "system_metrics_interval_s": 1.0,
        }
    cpus = _cpus(cpu_limit)
    spec = RayTrainSpec(
        workers=workers,
        use_gpu=gpus > 0,
        gpus_per_worker=gpus / workers if gpus > 0 else 1.0,
        cpus_per_worker=worker_cpus(cpus, workers),
        tracking=tracking,
    )
    status = "FAILED"
    run_dir = Path(strip_file_scheme(out))
    label = f"{kind} {cfg.model.variant}"
    try:
        # One training per run directory, resumed only with the settings its checkpoint
        # was written with: checked before Ray starts, as `tipsv2 train` does. Ray
        # workers' output never reaches this step's log: the progress comes from the
        # run's metrics.jsonl, tailed here (components.progress).
        with (
            guarded_run(run_dir, cfg, kind),
            ProgressReporter(run_dir / "metrics.jsonl", cfg.total_steps, label),
        ):
            result = train_on_ray(cfg, str(run_dir), kind, spec)  # type: ignore[arg-type]
        status = "FINISHED"
    finally:
        if group:
            from components.tracking import end_pipeline_run

            end_pipeline_run(
                group, status, experiment=experiment, tracking_uri=tracking["tracking_uri"]
            )
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
        **_losses(result.metrics),
    }


def train_step(
    kind: str,
    model_dir: str,
    dataset_dir: str,
    tokenizer_dir: str,
    *,
    teacher_dir: str | None = None,
    cpus: str,
    memory: str,
    gpus: int,
    accelerator: str,
    node_selector: Mapping[str, Any],
    tolerations: Sequence[Any],
    **train: Any,
) -> dict[str, Any]:
    """The body of the DAG's `pretrain` and `distill` components: `train_model` on the
    KFP artifact folders (the tokenizer artifact holds `tokenizer.model`, a teacher
    model artifact its `final/`). Returns the model artifact's metadata: the training
    summary and the resources the step asked for. `train`: more `train_model` keywords."""
    doc = train_model(
        kind,
        model_dir,
        dataset_dir,
        os.path.join(tokenizer_dir, "tokenizer.model"),
        teacher=os.path.join(teacher_dir, "final") if teacher_dir else None,
        cpu_limit=cpus,
        gpus=gpus,
        **train,
    )
    resources = {"cpu": cpus, "memory": memory, "gpus": gpus, "accelerator": accelerator,
                 "node_selector": node_selector, "tolerations": tolerations}  # fmt: skip
    return {**doc, "resources": resources}
