"""MLflow plumbing shared by the tracker, the registry and the steps: one client factory,
experiments, and the parent run that groups the steps of a pipeline run."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from components.settings import configure, load_stack_credentials
from components.tracking.tags import (
    DEFAULT_EXPERIMENT,
    PARENT_TAG,
    TAG_KIND,
    TAG_PIPELINE_RUN_ID,
    TAG_TRAINING_GROUP,
)
from tipsv2_core.errors import UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
# MLflow 3's UI opens an experiment of this kind on its training runs, not the GenAI view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# How long the creator of a parent run waits for concurrent creators (find_or_create_parent).
PARENT_SETTLE_S = 1.0


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The explicit URI, else `$MLFLOW_TRACKING_URI`, else `configure()`'s (stack or SQLite).

    An explicit URI that names the local stack's server also gets the stack's credentials
    into the environment (`load_stack_credentials`): its server requires them.
    """
    if tracking_uri:
        if is_http_uri(tracking_uri):
            load_stack_credentials(tracking_uri)
        return tracking_uri
    return configure().tracking_uri


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """An `MlflowClient` whose tracking and registry stores are both `tracking_uri`
    (resolved as in `resolve_tracking_uri`): runs and registered models live together."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


CONNECT_TIMEOUT_S = 5.0  # how long a command waits for a tracking server to answer at all


class TrackingUnavailable(UserError, ConnectionError):
    """The tracking server does not answer; the message names it and what to do."""


class TrackingAuthError(UserError, PermissionError):
    """The tracking server refuses this client's credentials (or their absence)."""


def require_reachable(tracking_uri: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """The resolved tracking URI, after checking that a tracking server answers its
    health check within `timeout` seconds (local stores always do).

    Without it MLflow's client retries a dead server for minutes and then fails with a
    traceback; a command that needs the server fails at once with one line instead.
    """
    from components.settings import is_healthy, mlflow_health_url

    uri = resolve_tracking_uri(tracking_uri)
    if not is_http_uri(uri):
        return uri
    safe = re.sub(r"//[^/@]*@", "//", uri)  # never print credentials
    if not is_healthy(mlflow_health_url(uri), timeout=timeout):
        raise TrackingUnavailable(
            f"tracking server {safe} does not answer its health check (timeout "
            f"{timeout:g} s); start it "
            "(`tipsv2 stack up`) or pass another --tracking-uri"
        )
    code = _auth_refusal(uri, timeout)
    if code is not None:
        from components.settings import env_file

        raise TrackingAuthError(
            f"tracking server {safe} refused the request ({code}): it needs "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the local stack's are "
            f"in {env_file()}; `source` it, or run from the stack's TIPSV2_HOME)"
        )
    return uri


def _auth_refusal(uri: str, timeout: float) -> int | None:
    """401 or 403 when the server refuses a cheap read with this environment's MLflow
    credentials (as MLflow's client would send them), else None (also when it cannot be
    asked: the command's own requests then report what is wrong)."""
    import base64
    import os
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    )
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        return e.code if e.code in (401, 403) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def is_http_uri(uri: str) -> bool:
    """True for a tracking server (as opposed to a local store such as sqlite://)."""
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
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=default_artifact_location(tracking_uri),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
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
    A failed or killed pipeline run also ends the step runs still RUNNING under it with
    the same status: their process is gone (a Ray worker stopped by Ctrl-C, a pod that
    was evicted) and no one else would. Returns the parent's id, or None when there is
    none.
    """
    from mlflow.entities import ViewType

    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id], _parent_filter(pipeline_run_id), run_view_type=ViewType.ACTIVE_ONLY
    )
    if status != "FINISHED":
        orphans = client.search_runs(
            [exp.experiment_id],
            f"tags.{TAG_KIND} = 'step' and tags.{TAG_PIPELINE_RUN_ID} = '{pipeline_run_id}' "
            "and attributes.status = 'RUNNING'",
            run_view_type=ViewType.ACTIVE_ONLY,
        )
        for run in orphans:
            client.set_terminated(run.info.run_id, status)
    for run in runs:
        client.set_terminated(run.info.run_id, status)
    return runs[0].info.run_id if runs else None


def adopt_group(
    pipeline_run_id: str,
    group: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
) -> list[str]:
    """Moves the step runs of `group` under the parent run of `pipeline_run_id`.

    A cached step (training) cannot know the pipeline run it serves, so it tracks itself as
    a pipeline of one step, `group`; the first uncached step after it that knows both ids
    (the evaluation of its model) calls this. The step runs get the pipeline's parent and
    id (the group stays as the tag `training_group`) and the group's own parent run is
    deleted. A group already adopted (a later cache hit of the same training) has no parent
    left and stays under the pipeline run it ran in. Returns the ids of the runs moved.
    """
    from mlflow.entities import ViewType

    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or not group or group == pipeline_run_id:
        return []
    own = client.search_runs(
        [exp.experiment_id], _parent_filter(group), run_view_type=ViewType.ACTIVE_ONLY
    )
    if not own:
        return []
    parent = find_or_create_parent(client, exp.experiment_id, pipeline_run_id)
    steps = client.search_runs(
        [exp.experiment_id],
        f"tags.{TAG_KIND} = 'step' and tags.{TAG_PIPELINE_RUN_ID} = '{group}'",
        run_view_type=ViewType.ACTIVE_ONLY,
    )
    for run in steps:
        client.set_tag(run.info.run_id, PARENT_TAG, parent)
        client.set_tag(run.info.run_id, TAG_PIPELINE_RUN_ID, pipeline_run_id)
        client.set_tag(run.info.run_id, TAG_TRAINING_GROUP, group)
    for run in own:
        client.delete_run(run.info.run_id)
    return [r.info.run_id for r in steps]


def is_permanent_error(exc: BaseException) -> bool:
    """A request the server rejected (bad name, deleted run): retrying cannot help."""
    from mlflow.exceptions import MlflowException

    # A connection failure reaches us as an MlflowException with INTERNAL_ERROR (500);
    # an answer the server gave carries its own code. Auth and rate limits may pass.
    if not isinstance(exc, MlflowException):
        return False
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status not in (401, 403, 408, 429)
