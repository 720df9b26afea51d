"""The tracking adapter: MLflow runs for pipeline steps, batched, outage-proof and secret-free.

The package, by concern: `tags` (every tag and environment name, declared once), `scrub`
(secrets), `lineage` (config, git, system info), `client` (MLflow plumbing and the parent
run), `tracker` (a step's run), `queries` (reading runs back for `tipsv2 runs`).

Run layout (docs/architecture.md, "Lineage"). One **parent run per pipeline run** and one
**child run per step** (MLflow nested runs, tag `mlflow.parentRunId`), all in one
experiment (default `tipsv2`). Steps run in separate processes (CLI, DVC stages, KFP
tasks), so the parent is found by its `pipeline_run_id` tag, or created by the first step
that needs it. Every run
carries the lineage tags `git_sha`, `data_version`, `pipeline_run_id` and, where known,
`image`; a step's run also holds the resolved config (flattened params such as
`model.variant`, `optim.lr`, and a `config.json` artifact), system info as `system.*` params
and the checkpoint URI as the tag `checkpoint_uri` (never the checkpoint itself).

Training on rank 0 (the loop in `tipsv2_core` must not import MLflow, so it gets a plain
callable)::

    from components.tracking import Tracker

    with Tracker("train", config=cfg, checkpoint_uri=out) as tracker:
        run_training(cfg, out, build_arch, mask_ratio=..., on_log=tracker.as_callback())
        tracker.log_metrics({"eval/zeroshot_seg/ade150/miou": 0.21}, step=cfg.total_steps)

A tracker built before the config is resolved (e.g. from a Ray job spec) takes it with
`tracker.log_config(cfg, world_size=W)` right after entering. Step runs leave the parent
running; the orchestrator's last act is `end_pipeline_run(pipeline_run_id)`.

`as_callback()` accepts the rows `run_training` writes to `metrics.jsonl`:
`{"step": 10, "train/loss": ..., "train/lr": ..., "train/images_per_s": ..., ...}`. The
tracker adds `train/step_time_s` (wall time between two rows over the steps between them)
when the row has none.

Batching. Rows are buffered and sent with `MlflowClient.log_batch` (one HTTP request per
call, at most 1000 values each) every `flush_every` rows or `flush_interval_s` seconds,
and when the tracker closes. A background thread does the sending, so `log_step` costs a
few microseconds and never waits on the network.

Outages. A failed send never raises into training: the first failure of an outage is
logged as one warning, values stay in a bounded buffer (the oldest are dropped first, and
counted, once it is full), and later flushes retry with exponential backoff. An HTTP server
is probed on `/health` (a 2 s loopback round trip) before MLflow's client is used, because
that client retries a dead server for minutes. If the server is down when the step starts,
the runs are created on the first flush after it comes back. Delivery is at least once: a
batch whose answer was lost is sent again.

Secrets. Every param, tag, metric name and artifact text goes through `Scrubber`: a value
whose key names a credential (`SECRET`, `PASSWORD`, `TOKEN`, `ACCESS_KEY`, ... as a word of
the key) becomes `***`, the values of the credential variables in the environment
(`AWS_SECRET_ACCESS_KEY`, `AWS_ACCESS_KEY_ID`, ...) are replaced wherever they appear, and
`user:password@` is cut out of URLs.

MLflow is imported lazily (about 1.3 s), so importing this module is cheap.
"""

from components.tracking.client import (
    adopt_group,
    client_for,
    default_artifact_location,
    end_pipeline_run,
    find_or_create_parent,
    get_or_create_experiment,
    resolve_tracking_uri,
)
from components.tracking.lineage import flatten_config, git_dirty, git_sha, system_info
from components.tracking.queries import all_experiment_ids, find_runs, list_runs
from components.tracking.scrub import (
    REDACTED,
    Scrubber,
    key_candidates,
    lookup_metric,
    readable_key,
    sanitize_key,
)
from components.tracking.tags import (
    DATA_VERSION_ENV,
    DEFAULT_EXPERIMENT,
    IMAGE_ENV,
    LINEAGE_TAGS,
    PARENT_TAG,
    PIPELINE_RUN_ID_ENV,
    TAG_CHECKPOINT,
    TAG_DATA_VERSION,
    TAG_GIT_SHA,
    TAG_KIND,
    TAG_PIPELINE_RUN_ID,
    TAG_STEP,
    UNKNOWN,
)
from components.tracking.tracker import Tracker, TrackerStats

__all__ = [
    "DATA_VERSION_ENV",
    "DEFAULT_EXPERIMENT",
    "IMAGE_ENV",
    "LINEAGE_TAGS",
    "PARENT_TAG",
    "PIPELINE_RUN_ID_ENV",
    "REDACTED",
    "TAG_CHECKPOINT",
    "TAG_DATA_VERSION",
    "TAG_GIT_SHA",
    "TAG_KIND",
    "TAG_PIPELINE_RUN_ID",
    "TAG_STEP",
    "UNKNOWN",
    "Scrubber",
    "Tracker",
    "TrackerStats",
    "adopt_group",
    "all_experiment_ids",
    "client_for",
    "default_artifact_location",
    "end_pipeline_run",
    "find_or_create_parent",
    "find_runs",
    "flatten_config",
    "get_or_create_experiment",
    "git_dirty",
    "git_sha",
    "key_candidates",
    "list_runs",
    "lookup_metric",
    "readable_key",
    "resolve_tracking_uri",
    "sanitize_key",
    "system_info",
]
