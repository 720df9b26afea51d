"""`tipsv2 reproduce`: train a registered model again from its lineage and compare."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.cli.common import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="re-run the training behind a registered model and compare the result",
        description="Reads the lineage record of a registered model version (or of a "
        "registration run), checks out its commit in a temporary git worktree, restores its "
        "data version (or re-synthesises it) and checks the hash, trains the recorded config "
        "again, and prints weights and metrics side by side with the original. The "
        "reproduction is logged to MLflow as a run linked to the original. Exit 0 when it "
        "matches within --tolerance, 1 when not, 2 on bad input.",
    )
    p.add_argument(
        "ref", metavar="MODEL", help="models:/NAME/VERSION, models:/NAME@ALIAS or a run id"
    )
    p.add_argument("--steps", type=int, default=None, help="train only N steps (a quick check)")
    p.add_argument(
        "--tolerance", type=float, default=1e-6, help="largest accepted |difference| (1e-6)"
    )
    p.add_argument("--data", default=None, help="the dataset to use (must be the recorded version)")
    p.add_argument("--out", default=None, help="default $TIPSV2_HOME/reproductions/<name>-<time>")
    p.add_argument("--repo", default=None, help="git repository holding the commit (this one)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="re-run the recorded commit although the model came from uncommitted changes",
    )
    p.add_argument("--no-track", action="store_true", help="do not log the reproduction")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_tracking_uri(p)
    p.set_defaults(handler=run_reproduce)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def format_report(doc: dict[str, Any]) -> str:
    from pipelines.cli.common import table

    lines = [f"\nreproduction of {doc['ref']}: {'PASSED' if doc['passed'] else 'FAILED'}"]
    lines.append(
        f"  commit {doc['git_sha'][:12]}; data {doc['data']['version']} ({doc['data']['how']})"
    )
    w = doc.get("weights")
    if doc.get("partial_steps"):
        lines.append(
            f"  partial run: {doc['partial_steps']} steps; nothing compared with the original"
        )
    elif w is not None:
        state = "identical" if w["identical"] else f"max |diff| {w['max_abs_diff']:.3g}"
        lines.append(f"  weights: {state} ({w['tensors']} tensors)")
    rows = [
        [m["name"], _num(m["original"]), _num(m["reproduced"]), _num(m["delta"])]
        for m in doc["metrics"]
    ]
    if rows:
        lines += ["", table(["metric", "original", "reproduced", "delta"], rows, max_cell=None)]
    for failure in doc.get("failures") or []:
        lines.append(f"  - {failure}")
    lines.append(f"\ntolerance {doc['tolerance']:g}; outputs {doc['out']}")
    if doc.get("run_id"):
        lines.append(f"mlflow run {doc['run_id']} (tag reproduces_run_id={doc['original_run_id']})")
    return "\n".join(lines)


def run_reproduce(args: argparse.Namespace) -> int:
    from components.reproduce.run import reproduce
    from components.settings import configure, disable_telemetry

    disable_telemetry()
    settings = configure()
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    label = args.ref.removeprefix("models:/").replace("/", "-").replace("@", "-")
    out = (
        Path(args.out)
        if args.out
        else (settings.home / "reproductions" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    )
    report = reproduce(
        args.ref,
        out=out.resolve(),
        tracking_uri=args.tracking_uri,
        repo=args.repo,
        data=args.data,
        steps=args.steps,
        tolerance=args.tolerance,
        workers=args.workers,
        allow_dirty=args.allow_dirty,
        track=not args.no_track,
        log=lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True),
    )
    doc = report.to_json()
    print(format_report(doc))
    if args.json:
        print(json.dumps(doc, default=str))
    return 0 if report.passed else 1
