"""Glue of the Kubeflow pipeline (`pipelines/dag.py`): one plain function per DAG step,
in one module per stage: `data` (curate, validate, version, plan), `train` (pretrain and
distil on Ray Train), `evaluate` (evaluate, pick the candidate), `release` (export,
register, gate, promote, close the run) and `deploy` (the champion behind the
serving endpoint).

Each `@dsl.component` in the DAG is a few lines that import one function from here and
call it with the artifact paths KFP hands it, so everything a step does can be read and
tested without KFP (this package must not import kfp: docs/architecture.md, "Layers").
The functions return JSON-ready dicts; the component copies what KFP should show
(metrics, metadata) onto its output artifacts.

Lineage: steps that KFP may serve from its cache (data, tokenizer, training) take no
pipeline run id, or every run would miss the cache; the uncached steps after them
(evaluation, registration, promotion, the exit task) record the run under its MLflow
parent run (components.tracking).
"""

from components.steps.data import (
    check_validation_config,
    data_version,
    plan_students,
    prepare_dataset,
    stop_pipeline,
    validate_dataset,
)
from components.steps.deploy import deploy_model
from components.steps.evaluate import EVAL_TASKS, copy_model, evaluate_model, select_candidate
from components.steps.release import (
    check_promotion_rules,
    export_model,
    finish_pipeline_run,
    gate_decision,
    promote_model,
    register_model,
)
from components.steps.train import train_model, train_step

__all__ = [
    "EVAL_TASKS",
    "check_promotion_rules",
    "check_validation_config",
    "copy_model",
    "data_version",
    "deploy_model",
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
    "train_step",
    "validate_dataset",
]
