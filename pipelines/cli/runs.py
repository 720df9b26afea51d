"""`tipsv2 runs list|show|compare`: the tracked runs, as terminal tables.

A run is named by its id, a unique prefix of its id (6+ characters, as `list` prints
them) or its name (`<pipeline_run_id>/<step>` for step runs; the newest wins when several
share a name, and a note on stderr says so). The tracking URI is `--tracking-uri`, else
`$MLFLOW_TRACKING_URI`, else the local stack's server while it runs, else the embedded
`sqlite:///$TIPSV2_HOME/mlflow.db` (see `components.settings.configure`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pipelines.cli.common import table, tracking_options

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

KEY_PARAMS = ("recipe", "model.variant", "optim.lr")
EVAL_COLUMNS = 3  # eval metrics shown by `list`: the most common among the listed runs
ID_CHARS = 12  # `list` prints id prefixes; `find_runs` resolves them


def register(sub: argparse._SubParsersAction) -> None:
    common = tracking_options()

    p = sub.add_parser(
        "runs",
        help="list, show and compare tracked runs",
        description=(
            "Read the MLflow runs of training, distillation and evaluation steps. RUN is a "
            "run id, a unique id prefix (6+ characters) or a run name."
        ),
    )
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)

    ls = ops.add_parser(
        "list",
        parents=[common],
        help="newest runs with key params and final metrics",
        description="The newest runs (step runs indented under their pipeline run).",
    )
    ls.add_argument("--experiment", default=None, help="one experiment (default: all)")
    ls.add_argument("--limit", type=int, default=30, help="how many runs (default 30)")
    ls.set_defaults(handler=run_list)

    show = ops.add_parser("show", parents=[common], help="one run: params, tags, last metrics")
    show.add_argument("run", metavar="RUN")
    show.set_defaults(handler=run_show)

    cmp_ = ops.add_parser(
        "compare",
        parents=[common],
        help="runs side by side: params that differ, final metrics with deltas",
        description=(
            "Runs side by side: the params whose values differ and every final metric, "
            "with its difference from the first run."
        ),
    )
    cmp_.add_argument("runs", metavar="RUN", nargs="+")
    cmp_.add_argument("--all-params", action="store_true", help="also the params that agree")
    cmp_.set_defaults(handler=run_compare)


# ---------------------------------------------------------------------------------------
# handlers


def run_list(args: argparse.Namespace) -> int:
    from components.tracking import list_runs

    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    client = _client(args)
    runs = list_runs(client, args.experiment, args.limit)
    if args.json:
        print(json.dumps([_run_json(r) for r in runs], indent=2))
        return 0
    if not runs:
        print("no runs" + (f" in experiment {args.experiment!r}" if args.experiment else ""))
        return 0
    params = [k for k in KEY_PARAMS if any(k in r.data.params for r in runs)]
    evals = _common_keys(
        (k for r in runs for k in r.data.metrics if k.startswith("eval/")), EVAL_COLUMNS
    )
    headers = ["NAME", "RUN ID", "STATUS", "START", *params, "train/loss", *evals]
    rows = []
    for run, depth in _tree_order(runs):
        m = run.data.metrics
        rows.append(
            [
                ("  " * depth + "└ " if depth else "") + (run.info.run_name or ""),
                run.info.run_id[:ID_CHARS],
                run.info.status,
                _time(run.info.start_time),
                *(run.data.params.get(k, "") for k in params),
                _num(m.get("train/loss")),
                *(_num(m.get(k)) for k in evals),
            ]
        )
    from components.tracking.scrub import readable_key

    print(table([readable_key(h).removeprefix("eval/") for h in headers], rows))
    return 0


def run_show(args: argparse.Namespace) -> int:
    client = _client(args)
    run = _resolve(client, args.run)
    if args.json:
        print(json.dumps(_run_json(run), indent=2))
        return 0
    info = run.info
    exp = client.get_experiment(info.experiment_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    head = [
        ["run", f"{info.run_name}  ({info.run_id})"],
        ["experiment", f"{exp.name}  ({info.experiment_id})"],
        ["status", info.status],
        ["start", _time(info.start_time)],
        ["duration", _duration(info.start_time, info.end_time)],
        ["artifacts", info.artifact_uri],
    ]
    if parent:
        head.append(["parent", f"{_run_name(client, parent)}  ({parent})"])
    children = _children(client, run)
    if children:
        head.append(["steps", ", ".join(f"{c.info.run_name}" for c in children)])
    print(table(["", ""], head, header=False, max_cell=None))
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    _section("tags", [[k, tags[k]] for k in sorted(tags)])
    _section("params", [[k, v] for k, v in sorted(run.data.params.items())])
    from components.tracking.scrub import readable_key

    rows = []
    for key in _metric_order(run.data.metrics):
        hist = client.get_metric_history(info.run_id, key)
        last = max(hist, key=lambda m: (m.step, m.timestamp)) if hist else None
        rows.append(
            [
                readable_key(key),
                _num(run.data.metrics[key]),
                str(last.step if last else ""),
                str(len(hist)),
            ]
        )
    _section("metrics", rows, ["METRIC", "LAST", "STEP", "POINTS"])
    return 0


def run_compare(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        raise ValueError("compare needs at least two runs")
    client = _client(args)
    runs = [_resolve(client, ref) for ref in args.runs]
    keys = sorted({k for r in runs for k in r.data.params})
    differ = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
    shown = keys if args.all_params else differ
    metrics = _metric_order({k: 0.0 for r in runs for k in r.data.metrics})
    if args.json:
        doc = {
            "runs": [{"run_id": r.info.run_id, "name": r.info.run_name} for r in runs],
            "params": {k: [r.data.params.get(k) for r in runs] for k in shown},
            "metrics": {k: [r.data.metrics.get(k) for r in runs] for k in metrics},
        }
        print(json.dumps(doc, indent=2))
        return 0
    names = [r.info.run_name or r.info.run_id[:ID_CHARS] for r in runs]
    head = [["run id", *(r.info.run_id[:ID_CHARS] for r in runs)]]
    head.append(["status", *(r.info.status for r in runs)])
    head.append(["start", *(_time(r.info.start_time) for r in runs)])
    print(table(["", *names], head))
    title = "params" if args.all_params else "params that differ"
    if not shown:
        print(f"\n{title}: none ({len(keys)} params, all equal)")
    else:
        rows = [[k, *(r.data.params.get(k, "-") for r in runs)] for k in shown]
        note = "" if args.all_params else f" ({len(keys) - len(differ)} equal params hidden)"
        _section(title + note, rows, ["PARAM", *names])
    from components.tracking.scrub import readable_key

    rows = []
    for key in metrics:
        base = runs[0].data.metrics.get(key)
        cells = [_num(base) or "-"]
        for r in runs[1:]:
            v = r.data.metrics.get(key)
            cells.append((_num(v) or "-") + _delta(base, v))
        rows.append([readable_key(key), *cells])
    _section(f"final metrics (delta vs {names[0]})", rows, ["METRIC", *names])
    return 0


# ---------------------------------------------------------------------------------------
# helpers


def _client(args: argparse.Namespace) -> MlflowClient:
    from components.tracking import client_for

    return client_for(args.tracking_uri)


def _resolve(client: MlflowClient, ref: str) -> Run:
    from components.tracking import find_runs

    found = find_runs(client, ref)
    if not found:
        raise ValueError(f"no run with id, id prefix or name {ref!r}")
    ids = {r.info.run_id for r in found}
    if len(ids) > 1:
        newest = found[0]
        if newest.info.run_name != ref:  # an id prefix: refusing beats guessing
            raise ValueError(f"id prefix {ref!r} matches {len(ids)} runs; give more characters")
        print(
            f"note: {len(ids)} runs are named {ref!r}; using the newest ({newest.info.run_id})",
            file=sys.stderr,
        )
        return newest
    return found[0]


def _run_name(client: MlflowClient, run_id: str) -> str:
    try:
        return client.get_run(run_id).info.run_name or ""
    except Exception:  # a deleted parent: the id alone is still useful
        return "?"


def _children(client: MlflowClient, run: Run) -> list[Run]:
    return client.search_runs(
        [run.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )


def _tree_order(runs: Sequence[Run]) -> list[tuple[Run, int]]:
    """Newest first, each step run right under its pipeline run when both are listed."""
    by_id = {r.info.run_id: r for r in runs}
    kids: dict[str, list[Run]] = {}
    roots = []
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if parent in by_id:
            kids.setdefault(parent, []).append(r)
        else:
            roots.append(r)
    out: list[tuple[Run, int]] = []

    def add(r: Run, depth: int) -> None:
        out.append((r, depth))
        for child in sorted(kids.get(r.info.run_id, []), key=lambda c: c.info.start_time or 0):
            add(child, depth + 1)

    for r in roots:
        add(r, 0)
    return out


def _common_keys(keys: Iterable[str], n: int) -> list[str]:
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    return sorted(sorted(counts, key=lambda k: (-counts[k], k))[:n])


def _metric_order(metrics: dict[str, Any]) -> list[str]:
    """train/ first, then eval/, then the rest; alphabetical inside each group."""
    group = {"train/": 0, "eval/": 1}
    return sorted(metrics, key=lambda k: (group.get(k.split("/")[0] + "/", 2), k))


def _run_json(run: Run) -> dict[str, Any]:
    info = run.info
    doc: dict[str, Any] = {
        "run_id": info.run_id,
        "name": info.run_name,
        "experiment_id": info.experiment_id,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "parent_run_id": run.data.tags.get("mlflow.parentRunId"),
        "tags": dict(run.data.tags),
        "params": dict(run.data.params),
        "metrics": {k: _json_num(v) for k, v in run.data.metrics.items()},
    }
    return doc


def _json_num(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)  # JSON has no NaN / Infinity


def _num(v: float | None) -> str:
    if v is None:
        return ""
    if not math.isfinite(v):
        return str(v)
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def _delta(base: float | None, v: float | None) -> str:
    if base is None or v is None or not (math.isfinite(base) and math.isfinite(v)):
        return ""
    d = v - base
    if d == 0:
        return " (=)"
    rel = f", {d / abs(base):+.1%}" if base else ""
    return f" ({d:+.4g}{rel})"


def _time(ms: int | None) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: int | None, end: int | None) -> str:
    if not start:
        return ""
    if not end:
        return "(running)"
    s = (end - start) / 1000
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _section(title: str, rows: list[list[str]], headers: Sequence[str] | None = None) -> None:
    print(f"\n{title}")
    if not rows:
        print("  (none)")
        return
    text = table(headers or ["", ""], rows, header=headers is not None)
    print("\n".join("  " + line for line in text.splitlines()))
