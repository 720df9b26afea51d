"""`Tracker`: a step's MLflow run, batched, outage-proof and secret-free (the package
docstring of components.tracking describes the run layout and its guarantees)."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from components.settings import is_healthy, mlflow_health_url
from components.tracking.client import (
    find_or_create_parent,
    get_or_create_experiment,
    is_http_uri,
    is_permanent_error,
    resolve_tracking_uri,
)
from components.tracking.lineage import config_tree, flatten_config, git_dirty, git_sha, system_info
from components.tracking.scrub import MAX_KEY, Scrubber, sanitize_key
from components.tracking.tags import (
    DATA_VERSION_ENV,
    DEFAULT_EXPERIMENT,
    IMAGE_ENV,
    MLFLOW_GIT_COMMIT_TAG,
    PARENT_TAG,
    PIPELINE_RUN_ID_ENV,
    TAG_CHECKPOINT,
    TAG_DATA_VERSION,
    TAG_GIT_DIRTY,
    TAG_GIT_SHA,
    TAG_IMAGE,
    TAG_KIND,
    TAG_PIPELINE_RUN_ID,
    TAG_STEP,
    UNKNOWN,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation): values per log_batch request, value lengths.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
CONFIG_FILE = "config.json"  # the resolved config, as an artifact of the step's run
_PIPELINE_RUN_ID_RE = re.compile(r"^[\w.\-:/@+]{1,200}$")


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
    files: dict[str, str] = field(default_factory=dict)  # local path -> artifact folder
    datasets: list[dict[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.params or self.tags or self.texts or self.files or self.datasets)


class Tracker:
    """A step's MLflow run: lineage, params, batched metrics; never breaks the step.

    Use it as a context manager (the run ends FINISHED, or FAILED / KILLED on an
    exception); `close()` does the same by hand, and an interpreter exit closes a tracker
    left open as KILLED (the step never said it finished). Only rank 0 of a distributed
    job should create one.

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
        datasets: inputs of the step, as `log_dataset` keywords (name, digest, source).
        system_metrics: sample CPU, memory, disk and network (MLflow's `system/*`
            metrics) every `system_metrics_interval_s` while the run is open.
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
        datasets: Sequence[Mapping[str, str]] = (),
        system_metrics: bool = False,
        system_metrics_interval_s: float = 5.0,
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
        self.system_metrics = system_metrics
        self.system_metrics_interval_s = system_metrics_interval_s
        self._monitor: Any = None
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

        tree = config_tree(config) if config is not None else None
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
        for dataset in datasets:
            self.log_dataset(**dataset)

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
        if self._monitor is not None:
            with contextlib.suppress(Exception):
                self._monitor.finish()
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

    def outcome(self, delivered: bool) -> dict[str, Any]:
        """What happened to the run, JSON-ready: for a process that did not see this
        tracker's warnings (a Ray worker's logs stay on the worker) to repeat them."""
        from dataclasses import asdict

        with self._lock:
            left = len(self._buffer)
        return {
            "run_id": self.run_id,
            "tracking_uri": self._safe_uri(),
            "delivered": delivered,
            "undelivered_values": left,
            **asdict(self.stats),
        }

    def _close_at_exit(self) -> None:
        # The interpreter is ending while the step never closed its run: the process was
        # stopped (a Ray worker shut down by an aborted run, a `sys.exit` mid-step), so the
        # step did not finish. KILLED, the status the driver gives such orphans too: a
        # FINISHED here could land after (and overwrite) the driver's KILLED.
        self.close_timeout_s = min(self.close_timeout_s, 5.0)  # do not hang an exit
        self.close("KILLED")

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
        tree = config_tree(config)
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

    def log_file(self, path: str, artifact_path: str | None = None) -> None:
        """A file (an HTML report) as an artifact, uploaded with the next flush. Only
        files the step wrote itself: they are sent as they are, not scrubbed."""
        with self._lock:
            self._pending.files[str(path)] = artifact_path or ""
        self._wake.set()

    def log_dataset(self, name: str, digest: str, source: str, context: str = "training") -> None:
        """An input dataset (MLflow's Datasets column): its name, its version as the
        digest (the DVC md5 or manifest hash) and where it lives; context: training or
        evaluation."""
        doc = {"name": name, "digest": digest or UNKNOWN, "source": source, "context": context}
        with self._lock:
            self._pending.datasets.append(self._scrub.mapping(doc))
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
                if is_http_uri(self.tracking_uri) and not is_healthy(
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
            if self.system_metrics:
                self._start_monitor()
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
                if not is_permanent_error(e):
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
        with self._lock:
            files = list(self._pending.files.items())
            datasets = list(self._pending.datasets)
        for path, folder in files:
            if os.path.isfile(path):
                client.log_artifact(self.run_id, path, folder or None)
            with self._lock:
                self._pending.files.pop(path, None)
        if datasets:
            client.log_inputs(self.run_id, datasets=[_dataset_input(d) for d in datasets])
            with self._lock:
                del self._pending.datasets[: len(datasets)]
        while True:
            with self._lock:
                chunk_values = [self._buffer[i] for i in range(min(len(self._buffer), 1000))]
            if not chunk_values:
                break
            metrics = [Metric(v.key, v.value, v.timestamp_ms, v.step) for v in chunk_values]
            try:
                client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            except Exception as e:
                if not is_permanent_error(e):
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

    def _start_monitor(self) -> None:
        """MLflow's system metrics sampler on this run (psutil; never fails the step)."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=self.system_metrics_interval_s,
                tracking_uri=self.tracking_uri,
            )
            self._monitor.start()
        except Exception as e:
            self._monitor = None
            log.warning("tracking: no system metrics (%s)", _short(e))

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


def _dataset_input(doc: Mapping[str, str]) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = doc["source"]
    kind = "s3" if source.startswith("s3://") else "local"
    dataset = Dataset(doc["name"], doc["digest"], kind, json.dumps({"uri": source}))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", doc["context"])])


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _nested_get(tree: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def new_pipeline_run_id(prefix: str = "local") -> str:
    """A fresh pipeline run id for a step that runs on its own: `PREFIX-YYYYmmdd-HHMMSS-`
    and 6 hex digits, e.g. `pretrain-nano14-20260101-120000-1a2b3c`."""
    return _new_run_id(prefix)


def _new_run_id(prefix: str = "local") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
