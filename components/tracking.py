"""The tracking adapter: MLflow runs for pipeline steps, batched, outage-proof and secret-free.

Run layout (DESIGN §4, Lineage). One **parent run per pipeline run** and one **child run per
step** (MLflow nested runs, tag `mlflow.parentRunId`), all in one experiment (default
`tipsv2`). Steps run in separate processes (CLI, DVC stages, KFP tasks), so the parent is
found by its `pipeline_run_id` tag, or created by the first step that needs it. Every run
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

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import platform
import re
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from components.settings import configure, is_healthy, mlflow_health_url

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "tipsv2"

# Environment variables a pipeline (KFP task, DVC stage, container) sets for its steps.
PIPELINE_RUN_ID_ENV = "TIPSV2_PIPELINE_RUN_ID"
IMAGE_ENV = "TIPSV2_IMAGE"
DATA_VERSION_ENV = "TIPSV2_DATA_VERSION"
GIT_SHA_ENVS = ("TIPSV2_GIT_SHA", "GIT_SHA")  # images have no .git: the build sets one

# Tags (DESIGN §4 names the lineage ones).
TAG_PIPELINE_RUN_ID = "pipeline_run_id"
TAG_GIT_SHA = "git_sha"
TAG_GIT_DIRTY = "git_dirty"
TAG_DATA_VERSION = "data_version"
TAG_IMAGE = "image"
TAG_STEP = "step"
TAG_KIND = "tipsv2_kind"  # "pipeline" (a parent) | "step" (a child)
TAG_CHECKPOINT = "checkpoint_uri"
PARENT_TAG = "mlflow.parentRunId"
MLFLOW_GIT_COMMIT_TAG = "mlflow.source.git.commit"  # so MLflow's UI shows the commit too
LINEAGE_TAGS = (TAG_GIT_SHA, TAG_DATA_VERSION, TAG_PIPELINE_RUN_ID, TAG_IMAGE)
UNKNOWN = "unknown"

# MLflow's limits (mlflow.utils.validation): values per log_batch request, value lengths.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
CONFIG_FILE = "config.json"  # the resolved config, as an artifact of the step's run
# How long the creator of a parent run waits for concurrent creators (find_or_create_parent).
PARENT_SETTLE_S = 1.0

REDACTED = "***"
# A credential's *name*: one of these words as a component of the key (split at `_`, `.`,
# `-`, `/` or the ends). Whole words, not substrings, because `data.tokenizer` (a model
# path) and `text_max_tokens` are not secrets while `api_token` and `db_password` are.
SECRET_NAME_RE = re.compile(
    r"(?:^|[_.\-/])(?:SECRET|PASSWORD|PASSWD|PASS|TOKEN|ACCESS_KEY|API_KEY|PRIVATE_KEY|"
    r"CREDENTIALS?|AUTH)(?:$|[_.\-/])",
    re.IGNORECASE,
)
# Variables whose values are secrets whatever their length (DESIGN §4: S3 credentials come
# from these and must never be logged); other variables with a credential's name count
# from MIN_SECRET_LEN characters, so a `FOO_TOKEN=1` does not turn every "1" into ***.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
MIN_SECRET_LEN = 6
_URL_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]+@")
# MLflow accepts alphanumerics, `_ - . / : ` and space in metric and param names; DESIGN's
# `i2t_r@1` would be rejected (and a rejected batch is lost), so keys are made valid here.
_INVALID_KEY_CHARS_RE = re.compile(r"[^/\w.\- :]")
_PIPELINE_RUN_ID_RE = re.compile(r"^[\w.\-:/@+]{1,200}$")


# ---------------------------------------------------------------------------------------
# secrets


@dataclass(frozen=True)
class Scrubber:
    """Removes credentials from keys, values and texts before anything reaches MLflow."""

    secret_values: tuple[str, ...] = ()

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()
    ) -> Scrubber:
        """Collects the secret values of `environ` (default `os.environ`) plus `extra`."""
        env = os.environ if environ is None else environ
        values = {env[k] for k in SECRET_ENV_VARS if env.get(k)}
        values |= {
            v for k, v in env.items() if SECRET_NAME_RE.search(k) and len(v) >= MIN_SECRET_LEN
        }
        values |= {v for v in extra if v}
        # Longest first, so that a secret containing another is replaced whole.
        return cls(tuple(sorted(values, key=lambda v: (-len(v), v))))

    @staticmethod
    def is_secret_name(name: str) -> bool:
        """True when `name` (an env variable, config key or tag key) names a credential."""
        return bool(SECRET_NAME_RE.search(name))

    def text(self, value: str) -> str:
        """`value` with every known secret value and every URL's `user:pass@` replaced."""
        for secret in self.secret_values:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _URL_USERINFO_RE.sub(rf"\g<scheme>{REDACTED}@", value)

    def pair(self, key: str, value: Any) -> tuple[str, str]:
        """(key, value) as strings, safe to log: a credential's name hides its value."""
        key = self.text(str(key))
        if self.is_secret_name(key):
            return key, REDACTED
        return key, self.text(_as_text(value))

    def mapping(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Every pair of `values` through `pair`."""
        return dict(self.pair(k, v) for k, v in values.items())

    def tree(self, obj: Any, name: str = "") -> Any:
        """A JSON-like tree (a resolved config) with secrets removed, for artifacts."""
        if name and self.is_secret_name(name):
            return REDACTED
        if isinstance(obj, Mapping):
            return {self.text(str(k)): self.tree(v, str(k)) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.tree(v) for v in obj]
        if isinstance(obj, str):
            return self.text(obj)
        return obj


def _as_text(value: Any) -> str:
    if isinstance(value, list | tuple) and all(not isinstance(v, dict | list) for v in value):
        # Same form as a `--set key=a,b` override, so a param can be pasted back.
        return ",".join(_as_text(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def sanitize_key(key: str) -> str:
    """A metric/param name MLflow accepts: `eval/retrieval/coco/i2t_r@1` -> `..._r_at_1`."""
    key = key.replace("@", "_at_")
    key = _INVALID_KEY_CHARS_RE.sub("_", key)
    key = re.sub(r"/{2,}", "/", key).strip("/")  # MLflow rejects names that are not
    key = "/".join(p for p in key.split("/") if p not in (".", ".."))  # normalised paths
    return key[:MAX_KEY] or "_"


# ---------------------------------------------------------------------------------------
# config, lineage, system info


def flatten_config(cfg: Any) -> dict[str, Any]:
    """A (dataclass) config as `{"model.variant": "nano14", "stages.0.steps": 100, ...}`.

    Lists of sections are indexed (`stages.0.steps`); lists of plain values stay one value.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            flat[prefix] = value

    walk("", cfg if isinstance(cfg, Mapping) else {"value": cfg})
    return flat


def _config_tree(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    return cfg


def git_sha(environ: Mapping[str, str] | None = None) -> str:
    """HEAD of the checkout this code runs from; else `$TIPSV2_GIT_SHA` / `$GIT_SHA`."""
    env = os.environ if environ is None else environ
    sha = _git("rev-parse", "HEAD")
    if sha and re.fullmatch(r"[0-9a-f]{40}", sha):
        return sha
    for name in GIT_SHA_ENVS:
        if env.get(name):
            return env[name]
    return UNKNOWN


def git_dirty() -> str | None:
    """ "true" when tracked files differ from HEAD, "false" when not, None without git."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else str(bool(out)).lower()


def _git(*args: str) -> str | None:
    # The code's own checkout, not the caller's working directory: a step run from
    # elsewhere still records the commit of the code that ran.
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def system_info(world_size: int | None = None) -> dict[str, str]:
    """Devices, world size, torch version and CPU count, as `system.*` params."""
    info = {
        "system.python": platform.python_version(),
        "system.platform": platform.platform(terse=True),
        "system.hostname": socket.gethostname(),
        "system.cpu_count": str(os.cpu_count() or 0),
        "system.world_size": str(
            world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
        ),
    }
    with contextlib.suppress(AttributeError, OSError):
        info["system.cpus_usable"] = str(len(os.sched_getaffinity(0)))
    try:
        import torch
    except ImportError:
        info["system.torch"] = "not installed"
        info["system.devices"] = "cpu"
        return info
    info["system.torch"] = torch.__version__
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["system.devices"] = ", ".join(names)
        info["system.device_count"] = str(len(names))
        info["system.cuda"] = str(torch.version.cuda)
    else:
        info["system.devices"] = "cpu"
        info["system.device_count"] = "0"
    return info


# ---------------------------------------------------------------------------------------
# MLflow plumbing


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The explicit URI, else `$MLFLOW_TRACKING_URI`, else `configure()`'s (stack or SQLite)."""
    if tracking_uri:
        return tracking_uri
    return configure().tracking_uri


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """An `MlflowClient` for `tracking_uri` (resolved as in `resolve_tracking_uri`)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def default_artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts: next to an SQLite store; the server decides.

    MLflow's own default for a database store is `./mlruns` under the *current working
    directory*, which scatters artifacts wherever a step happens to be started.
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, created (or restored from deleted) when needed."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(
            name, artifact_location=default_artifact_location(tracking_uri)
        )
    except MlflowException:
        # Another step process created it between our look-up and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _parent_filter(pipeline_run_id: str) -> str:
    return f"tags.{TAG_KIND} = 'pipeline' and tags.{TAG_PIPELINE_RUN_ID} = '{pipeline_run_id}'"


def find_or_create_parent(
    client: MlflowClient,
    experiment_id: str,
    pipeline_run_id: str,
    tags: Mapping[str, str] | None = None,
    settle_s: float = PARENT_SETTLE_S,
) -> str:
    """The parent run of `pipeline_run_id` in the experiment, created if none exists.

    MLflow has no create-if-absent, so two step processes starting together may both find
    none and both create one. A creator therefore waits `settle_s` (longer than a
    `create_run` round trip) so that every concurrent creation is visible, searches again
    and keeps the oldest (start time, then id); the others delete their own, and every step
    attaches to the same parent. Without the wait, a creator that searched before a slower
    one's run appeared could keep its own while the slower one picks another.
    """
    from mlflow.entities import ViewType

    def search() -> list[Run]:
        return client.search_runs(
            [experiment_id],
            _parent_filter(pipeline_run_id),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50,
        )

    def oldest(runs: Sequence[Run]) -> Run:
        return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    found = search()
    if found:
        return oldest(found).info.run_id
    created = client.create_run(
        experiment_id,
        run_name=pipeline_run_id,
        tags={**dict(tags or {}), TAG_KIND: "pipeline", TAG_PIPELINE_RUN_ID: pipeline_run_id},
    )
    time.sleep(settle_s)  # once per pipeline run: later steps find the parent at once
    winner = oldest(search() or [created])
    if winner.info.run_id != created.info.run_id:
        client.delete_run(created.info.run_id)
    return winner.info.run_id


def end_pipeline_run(
    pipeline_run_id: str,
    status: str = "FINISHED",
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
) -> str | None:
    """Marks the parent run of a pipeline run finished (the orchestrator's last act).

    Step trackers leave the parent running, since other steps may still attach to it.
    Returns the parent's id, or None when there is none.
    """
    from mlflow.entities import ViewType

    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id], _parent_filter(pipeline_run_id), run_view_type=ViewType.ACTIVE_ONLY
    )
    for run in runs:
        client.set_terminated(run.info.run_id, status)
    return runs[0].info.run_id if runs else None


def _is_permanent(exc: BaseException) -> bool:
    """A request the server rejected (bad name, deleted run): retrying cannot help."""
    from mlflow.exceptions import MlflowException

    # A connection failure reaches us as an MlflowException with INTERNAL_ERROR (500);
    # an answer the server gave carries its own code. Auth and rate limits may pass.
    if not isinstance(exc, MlflowException):
        return False
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status not in (401, 403, 408, 429)


# ---------------------------------------------------------------------------------------
# the tracker


class _Value(NamedTuple):
    seq: int  # position in the stream: what a sent batch removes from the buffer
    key: str
    value: float
    timestamp_ms: int
    step: int


@dataclass
class TrackerStats:
    """What the tracker did; `batches` counts successful `log_batch` calls (HTTP requests)."""

    batches: int = 0
    metrics_sent: int = 0
    failed_flushes: int = 0
    dropped: int = 0
    warnings: int = 0
    outage_s: float = 0.0


@dataclass
class _Pending:
    """Params, tags and artifacts not yet accepted by the server."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.params or self.tags or self.texts)


class Tracker:
    """A step's MLflow run: lineage, params, batched metrics; never breaks the step.

    Use it as a context manager (the run ends FINISHED, or FAILED / KILLED on an
    exception); `close()` does the same by hand, and an interpreter exit closes a tracker
    left open. Only rank 0 of a distributed job should create one.

    Args:
        step: the pipeline step ("train", "distill", "evaluate", ...): tag and run name.
        config: the resolved config (a dataclass such as `TrainConfig`, or a mapping),
            logged as flattened params and as the artifact `config.json`.
        pipeline_run_id: groups the steps of one pipeline run under one parent run;
            default `$TIPSV2_PIPELINE_RUN_ID`, else a new id (a lone step is a pipeline of
            one step).
        data_version: default the config's `run.data_version`, else `$TIPSV2_DATA_VERSION`.
        checkpoint_uri: where the step writes its checkpoint (also `set_checkpoint_uri`).
        tracking_uri: default `$MLFLOW_TRACKING_URI`, else `components.settings.configure()`.
        flush_every: rows (`log_step` / `log_metrics` calls) between two sends.
        flush_interval_s: the longest a value waits in the buffer while the server is up.
        max_buffered: values kept during an outage; beyond it the oldest are dropped.
        background: send from a thread (training never waits); False sends inline when a
            flush is due, which makes the number of requests exactly predictable.
    """

    def __init__(
        self,
        step: str = "train",
        *,
        config: Any = None,
        pipeline_run_id: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        data_version: str | None = None,
        checkpoint_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        tracking_uri: str | None = None,
        world_size: int | None = None,
        flush_every: int = 50,
        flush_interval_s: float = 10.0,
        max_buffered: int = 200_000,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        probe_timeout_s: float = 2.0,
        close_timeout_s: float = 15.0,
        background: bool = True,
    ) -> None:
        if flush_every < 1 or max_buffered < 1:
            raise ValueError("flush_every and max_buffered must be at least 1")
        env = os.environ
        self.step = step
        self.experiment = experiment
        self.pipeline_run_id = pipeline_run_id or env.get(PIPELINE_RUN_ID_ENV) or _new_run_id()
        if not _PIPELINE_RUN_ID_RE.match(self.pipeline_run_id):
            raise ValueError(
                f"pipeline_run_id {self.pipeline_run_id!r}: use letters, digits and ._-:/@+"
            )
        self.run_name = run_name or f"{self.pipeline_run_id}/{step}"
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.probe_timeout_s = probe_timeout_s
        self.close_timeout_s = close_timeout_s
        self.background = background
        self.stats = TrackerStats()
        # Read once: the secrets the environment holds when the step starts.
        self._scrub = Scrubber.from_environ()

        self._client: MlflowClient | None = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.run_id: str | None = None
        self._pending = _Pending()
        self._buffer: deque[_Value] = deque()
        self._seq = 0
        self._rows_since_flush = 0
        self._last_flush = time.monotonic()
        self._last_row: tuple[int, float] | None = None  # (step, monotonic time)
        self._lock = threading.Lock()  # buffer, pending, counters
        self._send_lock = threading.Lock()  # one sender at a time (thread or caller)
        self._failures = 0
        self._next_attempt = 0.0
        self._outage_since: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._closed = False

        tree = _config_tree(config) if config is not None else None
        if data_version is None:
            data_version = (
                _nested_get(tree, ("run", "data_version")) or env.get(DATA_VERSION_ENV) or ""
            )
        self._data_version_known = bool(data_version)
        sha = git_sha()
        lineage = {
            TAG_GIT_SHA: sha,
            TAG_DATA_VERSION: data_version or UNKNOWN,
            TAG_PIPELINE_RUN_ID: self.pipeline_run_id,
        }
        if env.get(IMAGE_ENV):
            lineage[TAG_IMAGE] = env[IMAGE_ENV]
        if sha != UNKNOWN:
            lineage[MLFLOW_GIT_COMMIT_TAG] = sha
        dirty = git_dirty()
        if dirty is not None:
            lineage[TAG_GIT_DIRTY] = dirty
        self._parent_tags = self._scrub.mapping(lineage)
        run_tags: dict[str, Any] = {**lineage, TAG_KIND: "step", TAG_STEP: step}
        if checkpoint_uri:
            run_tags[TAG_CHECKPOINT] = checkpoint_uri
        run_tags.update(tags or {})
        self._run_tags = self._limit(self._scrub.mapping(run_tags), MAX_TAG_VALUE)

        # Params wait in `_pending` until the first flush after start(), so `log_config`
        # right after entering (a tracker built from a job spec) still merges into them.
        self.log_params(system_info(world_size))
        if config is not None:
            self.log_config(config)
        self.log_params(params or {})

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Tracker:
        """Creates the runs (or defers that to a later flush when tracking is down)."""
        if self._started:
            return self
        self._started = True
        # Only the runs now (so `run_id` is known at once); params, tags and metrics go
        # with the first flush.
        self._send(force=True, create_only=True)
        if self.background:
            self._thread = threading.Thread(
                target=self._loop, name=f"tipsv2-tracker-{self.step}", daemon=True
            )
            self._thread.start()
        atexit.register(self._close_at_exit)
        return self

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        self.close(status)

    def close(self, status: str = "FINISHED") -> bool:
        """Sends what is buffered (retrying up to `close_timeout_s`), then ends the run.

        Returns True when everything reached the server. Idempotent.
        """
        if self._closed:
            return not self._has_work()
        self._closed = True
        if not self._started:  # never started: there is no run to end, and none is made
            return False
        with contextlib.suppress(Exception):
            atexit.unregister(self._close_at_exit)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.close_timeout_s)
        deadline = time.monotonic() + self.close_timeout_s
        delivered = self._send(force=True)
        while not delivered and time.monotonic() < deadline:
            # Wait out the backoff, but never past the deadline.
            time.sleep(max(0.1, min(self._next_attempt, deadline) - time.monotonic()))
            delivered = self._send(force=True)
        if delivered and self.run_id is not None:
            try:
                self._get_client().set_terminated(self.run_id, status)
            except Exception as e:  # the step is over; its result must not depend on this
                log.warning("tracking: could not end run %s: %s", self.run_id, e)
                delivered = False
        if not delivered:
            with self._lock:
                left = len(self._buffer)
            log.warning(
                "tracking: %d metric values (and any pending params/tags/artifacts) could not "
                "be sent to %s; the step's own files (metrics.jsonl) still hold them",
                left,
                self._safe_uri(),
            )
        return delivered

    def _close_at_exit(self) -> None:
        self.close_timeout_s = min(self.close_timeout_s, 5.0)  # do not hang an exit
        self.close("FINISHED")

    # -- logging (called by the step: cheap, never raises for tracking reasons) ---------

    def log_step(self, row: Mapping[str, Any]) -> None:
        """Buffers one `run_training` metrics row: `{"step": n, "train/...": value, ...}`.

        Bare keys (`loss`) are put under `train/`; non-numeric values are skipped.
        """
        step = int(row.get("step", 0))
        now = time.monotonic()
        values = {k if "/" in k else f"train/{k}": v for k, v in row.items() if k != "step"}
        if "train/step_time_s" not in values and self._last_row is not None:
            last_step, last_t = self._last_row
            if step > last_step:
                values["train/step_time_s"] = (now - last_t) / (step - last_step)
        self._last_row = (step, now)
        self._add(values, step)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffers metrics such as `eval/zeroshot_seg/ade150/miou` at `step` (default 0)."""
        self._add(metrics, step or 0)

    def as_callback(self) -> Callable[[dict[str, Any]], None]:
        """The hook for `run_training(..., on_log=tracker.as_callback())`."""
        return self.log_step

    def set_checkpoint_uri(self, uri: str) -> None:
        """Records where the checkpoint was written (a tag; the bytes stay in storage)."""
        self.set_tags({TAG_CHECKPOINT: uri})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags for the step's run (scrubbed; sent with the next flush)."""
        clean = self._limit(self._scrub.mapping(tags), MAX_TAG_VALUE)
        with self._lock:
            self._pending.tags.update(clean)
        self._wake.set()

    def log_config(self, config: Any, *, world_size: int | None = None) -> None:
        """The resolved config: flattened params, `config.json`, and its data version.

        For a tracker created before the config was resolved. Call it before the first
        flush (MLflow params cannot change once logged); `world_size` replaces the
        `system.world_size` guessed at construction.
        """
        tree = _config_tree(config)
        flat = flatten_config(tree)
        if world_size is not None:
            flat["system.world_size"] = world_size
        self.log_params(flat)
        self.log_text(json.dumps(self._scrub.tree(tree), indent=2, default=str) + "\n", CONFIG_FILE)
        version = _nested_get(tree, ("run", "data_version"))
        if version and not self._data_version_known:
            self._data_version_known = True
            self.set_tags({TAG_DATA_VERSION: version})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """More params (scrubbed; MLflow params cannot change once logged)."""
        clean = {sanitize_key(k): v for k, v in self._scrub.mapping(params).items()}
        with self._lock:
            self._pending.params.update(self._limit(clean, MAX_PARAM_VALUE))
        self._wake.set()

    def log_text(self, text: str, artifact_file: str) -> None:
        """A small text artifact (a report, a summary), scrubbed, sent with the next flush."""
        with self._lock:
            self._pending.texts[artifact_file] = self._scrub.text(text)
        self._wake.set()

    def flush(self) -> bool:
        """Sends everything buffered now (ignoring the backoff); True when nothing is left."""
        return self._send(force=True)

    # -- internals ----------------------------------------------------------------------

    def _add(self, metrics: Mapping[str, Any], step: int) -> None:
        ts = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue  # MLflow metrics are doubles; a stray string must not poison a batch
            batch.append((sanitize_key(self._scrub.text(key)), float(value)))
        due = False
        with self._lock:
            for key, value in batch:
                if len(self._buffer) >= self.max_buffered:
                    self._buffer.popleft()
                    self.stats.dropped += 1
                    if self.stats.dropped == 1:
                        log.warning(
                            "tracking: buffer full (%d values); dropping the oldest",
                            self.max_buffered,
                        )
                self._seq += 1
                self._buffer.append(_Value(self._seq, key, value, ts, step))
            self._rows_since_flush += 1
            due = self._rows_since_flush >= self.flush_every
        if not due:
            return
        if self.background:
            self._wake.set()
        elif self._started and not self._closed:
            self._send(force=False)

    def _has_work(self) -> bool:
        with self._lock:
            return bool(self._buffer) or bool(self._pending) or self.run_id is None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=min(self.flush_interval_s, 1.0))
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._lock:
                due = self._rows_since_flush >= self.flush_every or (
                    time.monotonic() - self._last_flush >= self.flush_interval_s
                )
            if due and self._has_work():
                self._send(force=False)

    def _get_client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _safe_uri(self) -> str:
        return self._scrub.text(self.tracking_uri)

    def _send(self, force: bool, create_only: bool = False) -> bool:
        """One attempt to deliver runs, params, tags, artifacts and metrics; never raises."""
        with self._send_lock:
            if not force and time.monotonic() < self._next_attempt:
                return False
            with self._lock:
                self._rows_since_flush = 0
                self._last_flush = time.monotonic()
            if not self._has_work():
                return True
            try:
                if _is_http(self.tracking_uri) and not is_healthy(
                    mlflow_health_url(self.tracking_uri), timeout=self.probe_timeout_s
                ):
                    raise ConnectionError("the tracking server does not answer /health")
                self._deliver(create_only)
            except Exception as e:
                self._failed(e)
                return False
            self._recovered()
            return not self._has_work()

    def _deliver(self, create_only: bool = False) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self._get_client()
        if self.run_id is None:
            self.experiment_id = get_or_create_experiment(
                client, self.experiment, self.tracking_uri
            )
            self.parent_run_id = find_or_create_parent(
                client, self.experiment_id, self.pipeline_run_id, self._parent_tags
            )
            run = client.create_run(
                self.experiment_id,
                run_name=self.run_name,
                tags={**self._run_tags, PARENT_TAG: self.parent_run_id},
            )
            self.run_id = run.info.run_id
            log.info("tracking: run %s (%s) at %s", self.run_id, self.run_name, self._safe_uri())
        if create_only:
            return
        with self._lock:
            params = list(self._pending.params.items())
            tags = list(self._pending.tags.items())
            texts = list(self._pending.texts.items())
        # Params and tags first: they are small, and a run without its config is useless.
        items = [("p", k, v) for k, v in params] + [("t", k, v) for k, v in tags]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = items[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            try:
                client.log_batch(
                    self.run_id,
                    params=[Param(k, v) for kind, k, v in chunk if kind == "p"],
                    tags=[RunTag(k, v) for kind, k, v in chunk if kind == "t"],
                    synchronous=True,
                )
            except Exception as e:
                if not _is_permanent(e):
                    raise
                # E.g. a param that already holds another value: retrying cannot fix it.
                log.warning("tracking: params/tags rejected by the server: %s", _short(e))
            else:
                self.stats.batches += 1
            with self._lock:
                for kind, k, v in chunk:
                    target = self._pending.params if kind == "p" else self._pending.tags
                    if target.get(k) == v:
                        del target[k]
        for name, text in texts:
            client.log_text(self.run_id, text, name)
            with self._lock:
                if self._pending.texts.get(name) == text:
                    del self._pending.texts[name]
        while True:
            with self._lock:
                chunk_values = [self._buffer[i] for i in range(min(len(self._buffer), 1000))]
            if not chunk_values:
                break
            metrics = [Metric(v.key, v.value, v.timestamp_ms, v.step) for v in chunk_values]
            try:
                client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            except Exception as e:
                if not _is_permanent(e):
                    raise
                log.warning("tracking: %d metric values rejected and dropped: %s", len(metrics), e)
                self.stats.dropped += len(metrics)
            else:
                self.stats.batches += 1
                self.stats.metrics_sent += len(metrics)
            last = chunk_values[-1].seq
            with self._lock:
                while self._buffer and self._buffer[0].seq <= last:
                    self._buffer.popleft()

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._failures += 1
        self.stats.failed_flushes += 1
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (self._failures - 1))
        self._next_attempt = now + delay
        with self._lock:
            buffered = len(self._buffer)
        if self._outage_since is None:
            self._outage_since = now
            self.stats.warnings += 1
            # One warning per outage; the retries that follow are debug-level.
            log.warning(
                "tracking: cannot reach %s (%s); training goes on, %d metric values are "
                "buffered and will be retried with backoff",
                self._safe_uri(),
                self._scrub.text(_short(exc)),
                buffered,
            )
        else:
            log.debug("tracking: retry failed (%s); next in %.1f s", _short(exc), delay)

    def _recovered(self) -> None:
        self._failures = 0
        self._next_attempt = 0.0
        if self._outage_since is not None:
            took = time.monotonic() - self._outage_since
            self.stats.outage_s += took
            self._outage_since = None
            log.warning("tracking: %s reachable again after %.0f s", self._safe_uri(), took)

    @staticmethod
    def _limit(values: Mapping[str, str], limit: int) -> dict[str, str]:
        return {
            k[:MAX_KEY]: v if len(v) <= limit else v[: limit - 3] + "..." for k, v in values.items()
        }


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _nested_get(tree: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _new_run_id() -> str:
    return f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------------------
# reading runs back (`tipsv2 runs`)


def all_experiment_ids(client: MlflowClient) -> list[str]:
    """Ids of every active experiment."""
    from mlflow.entities import ViewType

    return [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]


def list_runs(client: MlflowClient, experiment: str | None = None, limit: int = 50) -> list[Run]:
    """The newest `limit` active runs of one experiment (by name) or of all of them."""
    from mlflow.entities import ViewType

    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"no experiment named {experiment!r}")
        ids = [exp.experiment_id]
    else:
        ids = all_experiment_ids(client)
    if not ids:
        return []
    return client.search_runs(
        ids,
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=limit,
        order_by=["attributes.start_time DESC"],
    )


def find_runs(client: MlflowClient, ref: str) -> list[Run]:
    """Runs matching `ref`: a run id, a run name (newest first) or a unique id prefix."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    if re.fullmatch(r"[0-9a-f]{32}", ref):
        try:
            return [client.get_run(ref)]
        except MlflowException:
            pass
    ids = all_experiment_ids(client)
    if not ids:
        return []
    # MLflow's filter grammar has no escapes: quote with the kind the name does not hold.
    quoted = f'"{ref}"' if "'" in ref else f"'{ref}'"
    by_name = client.search_runs(
        ids,
        f"attributes.run_name = {quoted}",
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time DESC"],
    )
    if by_name:
        return list(by_name)
    if re.fullmatch(r"[0-9a-f]{6,31}", ref):
        recent = client.search_runs(ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=5000)
        return [r for r in recent if r.info.run_id.startswith(ref)]
    return []
