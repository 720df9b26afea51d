"""The names a run carries: lineage tags, step tags, registry version tags, and the
environment variables a pipeline sets for its steps. Declared here once; the tracker, the
registry and the CLI import them (docs/architecture.md, "Lineage")."""

from __future__ import annotations

DEFAULT_EXPERIMENT = "tipsv2"

# Environment variables a pipeline (KFP task, DVC stage, container) sets for its steps.
PIPELINE_RUN_ID_ENV = "TIPSV2_PIPELINE_RUN_ID"
IMAGE_ENV = "TIPSV2_IMAGE"
DATA_VERSION_ENV = "TIPSV2_DATA_VERSION"
GIT_SHA_ENVS = ("TIPSV2_GIT_SHA", "GIT_SHA")  # images have no .git: the build sets one

# Tags of every run (the lineage ones: docs/architecture.md, "Lineage").
TAG_PIPELINE_RUN_ID = "pipeline_run_id"
TAG_GIT_SHA = "git_sha"
TAG_GIT_DIRTY = "git_dirty"
TAG_DATA_VERSION = "data_version"
TAG_IMAGE = "image"
TAG_STEP = "step"
TAG_KIND = "tipsv2_kind"  # "pipeline" (a parent) | "step" (a child)
TAG_CHECKPOINT = "checkpoint_uri"
TAG_TRAINING_GROUP = "training_group"  # a cached training step's own id (client.adopt_group)
PARENT_TAG = "mlflow.parentRunId"
MLFLOW_GIT_COMMIT_TAG = "mlflow.source.git.commit"  # so MLflow's UI shows the commit too
LINEAGE_TAGS = (TAG_GIT_SHA, TAG_DATA_VERSION, TAG_PIPELINE_RUN_ID, TAG_IMAGE)
UNKNOWN = "unknown"

# What a registered version carries besides the lineage (as run and version tags).
TAG_EVAL_DATA_VERSION = "eval_data_version"
TAG_VARIANT = "variant"
TAG_PARITY_PASSED = "parity_passed"  # "true" | "false": the export's fp32 parity verdict
TAG_PARITY_TOLERANCE = "parity_tolerance"
TAG_EXPORT_FORMAT = "export_format"
