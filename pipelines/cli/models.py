"""`tipsv2 models list|show|register`, `tipsv2 promote`, `tipsv2 rollback`: the model registry.

A registered model holds versions of ONNX exports (`tipsv2 export`); `register` adds one
with its eval metrics and lineage and points the alias `challenger` at it. `promote` runs
the promotion gate (components.promote) and moves `champion` only if the version beats
the current champion on the same eval data; `--force --reason` overrides the gate, and
`rollback` moves `champion` back. Every decision is recorded on the version and in the
promotion history, which `models show` prints. The tracking URI is `--tracking-uri`, else
`$MLFLOW_TRACKING_URI`, else the local stack's server while it runs, else the embedded
`sqlite:///$TIPSV2_HOME/mlflow.db` (components.settings.configure).

Users load a champion with `tipsv2 embed image --checkpoint models:/NAME@champion …` or
`mlflow.pyfunc.load_model("models:/NAME@champion")`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pipelines.cli.common import table as _plain_table
from pipelines.cli.common import tracking_options

EVAL_COLUMNS = 3  # eval metrics `models show` puts in its table: the most common ones
MAX_CELL = 60


def register(sub: argparse._SubParsersAction) -> None:
    common = tracking_options()

    p = sub.add_parser(
        "models",
        help="list, show and register models in the MLflow registry",
        description="Registered models, their versions, aliases, metrics and promotion "
        "decisions; registering an ONNX export as a new version.",
    )
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)

    ls = ops.add_parser("list", parents=[common], help="registered models and their aliases")
    ls.set_defaults(handler=run_list)

    show = ops.add_parser(
        "show",
        parents=[common],
        help="one model: versions with aliases, metrics, decisions; promotion history",
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument("--history", type=int, default=20, help="history rows (default 20)")
    show.set_defaults(handler=run_show)

    reg = ops.add_parser(
        "register",
        parents=[common],
        help="register an ONNX export as a new version (alias: challenger)",
        description=(
            "Log the export's image encoder as an MLflow ONNX model (signature, input "
            "example), the whole export directory beside it, the eval metrics and lineage "
            "on the run and the version, and point the alias `challenger` at the version."
        ),
    )
    reg.add_argument("--export", required=True, help="ONNX export directory (`tipsv2 export`)")
    reg.add_argument("--name", required=True, help="registered model name")
    reg.add_argument(
        "--metrics",
        required=True,
        help="eval metrics JSON: `tipsv2 eval --output`'s {name: value}, or "
        '{"metrics": {...}, "eval_data_version": ...}',
    )
    reg.add_argument(
        "--data-version",
        default=None,
        help="training data version (default: what the checkpoint recorded, or "
        "$TIPSV2_DATA_VERSION)",
    )
    reg.add_argument(
        "--eval-data-version",
        default=None,
        help="version of the eval dataset the metrics come from; the gate only compares "
        "versions evaluated on the same one (default: the metrics file's)",
    )
    reg.add_argument("--pipeline-run-id", default=None, help="default $TIPSV2_PIPELINE_RUN_ID")
    reg.add_argument(
        "--checkpoint-uri", default=None, help="native checkpoint URI (default: the export's)"
    )
    reg.add_argument("--alias", default="challenger", help="alias for the new version")
    reg.add_argument("--experiment", default="tipsv2", help="MLflow experiment of the run")
    reg.set_defaults(handler=run_register)

    pr = sub.add_parser(
        "promote",
        parents=[common],
        help="run the promotion gate and move `champion` if the version passes",
        description=(
            "Compare version V with the current champion on the same eval data version: "
            "parity of the export, the primary metric (--primary-metric / --config; default: "
            "the only eval/zeroshot_seg/*/miou) and non-regression margins on others. Moves "
            "`champion` only if every rule passes (exit 0), else records the refusal (exit "
            "1). --force moves it anyway and records who and why."
        ),
    )
    pr.add_argument("name", metavar="NAME")
    pr.add_argument("--version", required=True, help="the version to promote")
    pr.add_argument("--config", default=None, help="gate config, .json or .yaml")
    pr.add_argument("--primary-metric", default=None, help="metric that decides")
    pr.add_argument(
        "--lower-is-better", action="store_true", help="the primary metric is a loss/error"
    )
    pr.add_argument(
        "--min-improvement", type=float, default=None, help="required gain on the primary"
    )
    pr.add_argument(
        "--margin",
        action="append",
        default=[],
        metavar="METRIC=MARGIN",
        help="allowed regression of a secondary metric (repeatable; prefix METRIC with - "
        "for lower-is-better)",
    )
    pr.add_argument(
        "--parity-tolerance", type=float, default=None, help="max export/onnx/max_abs_diff"
    )
    pr.add_argument("--force", action="store_true", help="promote even if the gate refuses")
    pr.add_argument("--reason", default=None, help="why (required with --force)")
    pr.add_argument("--actor", default=None, help="who (default $TIPSV2_ACTOR or login name)")
    pr.set_defaults(handler=run_promote)

    rb = sub.add_parser(
        "rollback",
        parents=[common],
        help="move `champion` back to an earlier champion (recorded in the history)",
        description=(
            "Move `champion` back to a version that was champion before and is older than "
            "the current one. Any other version needs --force with --reason; the history "
            "records the override."
        ),
    )
    rb.add_argument("name", metavar="NAME")
    rb.add_argument("--to-version", required=True, help="the version to make champion again")
    rb.add_argument("--reason", default=None, help="why (required with --force)")
    rb.add_argument(
        "--force",
        action="store_true",
        help="move `champion` to a version that was never champion, or forward (recorded)",
    )
    rb.add_argument("--actor", default=None, help="who (default $TIPSV2_ACTOR or login name)")
    rb.set_defaults(handler=run_rollback)


# ---------------------------------------------------------------------------------------
# handlers


def run_list(args: argparse.Namespace) -> int:
    from components.registry import list_models
    from components.tracking import client_for

    models = list_models(client_for(args.tracking_uri))
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no registered models")
        return 0
    rows = [
        [
            m["name"],
            ", ".join(f"{a}=v{v}" for a, v in m["aliases"].items()),
            f"v{m['latest_version']}" if m["latest_version"] else "",
            _time(m["updated_ms"]),
        ]
        for m in models
    ]
    print(table(["NAME", "ALIASES", "LATEST", "UPDATED"], rows))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from components.promote import TAG_DECISION, history
    from components.registry import list_versions
    from components.tracking import client_for

    client = client_for(args.tracking_uri)
    versions = list_versions(client, args.name)
    events = history(args.name, tracking_uri=args.tracking_uri, limit=args.history)
    if args.json:
        doc = {
            "name": args.name,
            "versions": [v.to_json() for v in versions],
            "history": events,
        }
        print(json.dumps(doc, indent=2))
        return 0
    counts = Counter(k for v in versions for k in v.metrics if k.startswith("eval/"))
    evals = [k for k, _ in counts.most_common(EVAL_COLUMNS)]
    rows = []
    for v in versions:
        parity = {True: "ok", False: "FAILED", None: "?"}[v.parity_passed]
        rows.append(
            [
                f"v{v.version}",
                ", ".join(v.aliases),
                *(_num(v.metrics.get(k)) for k in evals),
                f"{parity} {_num(v.max_abs_diff)}",
                v.eval_data_version or "",
                v.tags.get(TAG_DECISION, ""),
                _time(v.created_ms),
            ]
        )
    from components.tracking.scrub import readable_key

    headers = ["VERSION", "ALIASES", *(readable_key(k).removeprefix("eval/") for k in evals)]
    headers += ["PARITY", "EVAL DATA", "DECISION", "CREATED"]
    print(table(headers, rows))
    if events:
        print("\npromotion history (newest first):")
        hist = [
            [
                e["timestamp"] or "",
                f"v{e['version']}",
                e["decision"] or "",
                f"v{e['compared_to']}" if e["compared_to"] else "-",
                e["actor"] or "",
                "; ".join(e["reasons"]),
            ]
            for e in events
        ]
        print(table(["WHEN", "VERSION", "DECISION", "VS", "ACTOR", "REASONS"], hist))
    return 0


def run_register(args: argparse.Namespace) -> int:
    from components.registry import load_metrics_file, register_export

    metrics, lineage = load_metrics_file(args.metrics)
    with _stdout_to_stderr():
        result = register_export(
            args.export,
            args.name,
            metrics,
            eval_data_version=args.eval_data_version or lineage.get("eval_data_version"),
            data_version=args.data_version or lineage.get("data_version"),
            pipeline_run_id=args.pipeline_run_id,
            checkpoint_uri=args.checkpoint_uri,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            alias=args.alias or None,
        )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        aliases = f" (alias {', '.join(result.aliases)})" if result.aliases else ""
        print(f"registered {result.uri}{aliases}: run {result.run_id}, model {result.model_id}")
    return 0


def _gate_config(args: argparse.Namespace) -> dict[str, Any] | None:
    """--config's fields with the command-line options' on top; None when none is given."""
    from components.promote import GateConfig, secondary_rules

    doc: dict[str, Any] = GateConfig.from_file(args.config).to_dict() if args.config else {}
    if args.primary_metric:
        doc["primary_metric"] = args.primary_metric
    if args.lower_is_better:
        doc["higher_is_better"] = False
    if args.min_improvement is not None:
        doc["min_improvement"] = args.min_improvement
    if args.parity_tolerance is not None:
        doc["parity_tolerance"] = args.parity_tolerance
    if args.margin:
        secondary = dict(doc.get("secondary") or {})
        for rule in secondary_rules(args.margin):
            secondary[rule.metric] = {
                "margin": rule.margin,
                "higher_is_better": rule.higher_is_better,
            }
        doc["secondary"] = secondary
    # A missing primary metric is derived from the challenger (components.promote).
    return doc or None


def run_promote(args: argparse.Namespace) -> int:
    from components.promote import promote

    if args.force and not args.reason:
        raise ValueError("--force needs --reason")
    with _stdout_to_stderr():
        decision = promote(
            args.name,
            args.version,
            _gate_config(args),
            force=args.force,
            reason=args.reason,
            actor=args.actor,
            tracking_uri=args.tracking_uri,
        )
    _print_decision(decision, args.json)
    return 0 if decision.moved else 1


def run_rollback(args: argparse.Namespace) -> int:
    from components.promote import rollback

    if args.force and not args.reason:
        raise ValueError("--force needs --reason")
    with _stdout_to_stderr():
        decision = rollback(
            args.name,
            args.to_version,
            force=args.force,
            reason=args.reason,
            actor=args.actor,
            tracking_uri=args.tracking_uri,
        )
    _print_decision(decision, args.json)
    return 0


def _print_decision(decision: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(decision.to_json(), indent=2))
        return
    before = f"v{decision.champion_before}" if decision.champion_before else "none"
    after = f"v{decision.champion_after}" if decision.champion_after else "none"
    out = sys.stdout if decision.moved else sys.stderr
    print(f"{decision.name} v{decision.version}: {decision.action.upper()}", file=out)
    print(f"  champion: {before} -> {after}", file=out)
    for rule in decision.rules:
        print(f"  [{'pass' if rule.passed else 'FAIL'}] {rule.rule}: {rule.message}", file=out)
    if not decision.rules:
        for reason in decision.reasons:
            print(f"  {reason}", file=out)
    if decision.reason:
        print(f"  reason: {decision.reason} (by {decision.actor})", file=out)
    print(f"  recorded in history run {decision.history_run_id}", file=out)


def _stdout_to_stderr() -> contextlib.AbstractContextManager:
    """MLflow prints "View run … at: URL" lines to stdout when it ends a run on a tracking
    server; they go to stderr so that stdout holds only this command's output (JSON)."""
    return contextlib.redirect_stdout(sys.stderr)


# ---------------------------------------------------------------------------------------
# formatting


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _time(ms: int | None) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The registry's tables: left-aligned columns, cells cut at MAX_CELL characters."""
    return _plain_table(headers, rows, max_cell=MAX_CELL, numbers_right=False)
