"""Reading runs back, for `tipsv2 runs`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


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
