"""`tipsv2 stack up|down|status`: the local stack of real services (S3 gateway + MLflow).

A thin wrapper over `components.stack`, which documents what runs where. Exit codes: 0 on
success (`status`: every service healthy), 1 when a service is stopped or unhealthy or
could not be started. Nothing printed here ever holds a credential: they stay in the env
file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.stack import StackStatus


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _services(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    known = ("s3", "mlflow")
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(known)}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stack",
        help="start / stop / inspect the local S3 gateway and MLflow server",
        description=(
            "The local stack of real services, on 127.0.0.1 and under $TIPSV2_HOME "
            "(default ./.tipsv2): an S3 gateway (juicefs gateway, generated credentials) "
            "and an MLflow tracking server whose artifacts go to that gateway. Steps pick "
            "it up from $TIPSV2_HOME/stack/stack.env while it is healthy, and fall back to "
            "a local folder and SQLite MLflow when it is not."
        ),
    )
    p.add_argument("--home", type=Path, default=None, help="default: $TIPSV2_HOME or ./.tipsv2")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)

    up = ops.add_parser(
        "up",
        help="start the services (idempotent)",
        description=(
            "Start the S3 gateway and the MLflow server unless they already run. Ports: "
            "--*-port, else $TIPSV2_S3_PORT / $TIPSV2_MLFLOW_PORT, else the last run's if "
            "free, else any free port."
        ),
    )
    up.add_argument("--s3-port", type=_port, default=None, help="default: any free port")
    up.add_argument("--mlflow-port", type=_port, default=None, help="default: any free port")
    up.add_argument(
        "--services",
        type=_services,
        default=("s3", "mlflow"),
        help="comma list (default s3,mlflow; mlflow implies s3)",
    )
    up.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for each health check"
    )
    up.add_argument(
        "--serve",
        action="store_true",
        help="also start the model server (tipsv2 serve) following --serve-model",
    )
    up.add_argument(
        "--serve-model",
        default="models:/tipsv2@champion",
        help="what the server serves (default models:/tipsv2@champion)",
    )
    up.add_argument("--serve-port", type=_port, default=None, help="default: any free port")
    up.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the MLflow server behind Basic auth with generated credentials, in stack.env "
        "as MLFLOW_TRACKING_USERNAME/PASSWORD (the default). --no-auth: no authentication, "
        "for a single-user machine only (kept for later `up`s until --auth). Switching a "
        "running server needs `down` first",
    )
    up.set_defaults(handler=run_up)

    down = ops.add_parser("down", help="stop the services (data, logs and env file stay)")
    down.set_defaults(handler=run_down)

    st = ops.add_parser("status", help="URLs, pids and health of each service")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(handler=run_status)


def _env_port(value: int | None, variable: str) -> int | None:
    """The flag's port, else the environment variable's; 0 / unset means "choose one"."""
    if value is None and os.environ.get(variable):
        try:
            value = _port(os.environ[variable])
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{variable}: {e}") from None
    return value or None


def _print_status(status: StackStatus) -> None:
    for s in status.services:
        url = s.url or "-"
        pid = f"pid {s.pid}" if s.pid else ""
        auth = "  (no authentication)" if s.auth is False and s.running else ""
        print(f"{s.name:<7} {s.state:<10} {url:<24} {pid}{auth}".rstrip())
    print(f"env file {status.env_file}")
    print(f"buckets  {', '.join('s3://' + b for b in status.buckets)}")
    print(f"logs     {status.services[0].log.parent}")


def run_up(args: argparse.Namespace) -> int:
    from components import stack

    try:
        actions = stack.up(
            args.home,
            services=args.services,
            s3_port=_env_port(args.s3_port, "TIPSV2_S3_PORT"),
            mlflow_port=_env_port(args.mlflow_port, "TIPSV2_MLFLOW_PORT"),
            timeout=args.timeout,
            auth=args.auth,
        )
    except stack.StackError as e:
        print(f"tipsv2 stack up: error: {e}", file=sys.stderr)
        return 1
    status = stack.status(args.home)
    for name, action in actions.items():
        print(f"{name:<7} {action:<16} {status.service(name).url}")
    note = _auth_note(status, stack.auth_opted_out(args.home))
    if note:
        print(f"tipsv2 stack up: note: {note}", file=sys.stderr)
    if getattr(args, "serve", False):
        from components import stack_serve

        try:
            action = stack_serve.up(args.home, model=args.serve_model, port=args.serve_port)
        except stack.StackError as e:
            print(f"tipsv2 stack up: error: {e}", file=sys.stderr)
            return 1
        print(f"{'serve':<7} {action:<16} {stack_serve.url(args.home)}")
    print(f"env file {status.env_file} (mode 600; `source` it to use the stack from a shell)")
    return 0


def _auth_note(status: StackStatus, opted_out: bool) -> str | None:
    """One line when the running MLflow server has no authentication, else None."""
    mlflow = status.service("mlflow")
    if not mlflow.running or mlflow.auth is not False:
        return None
    if opted_out:
        return "mlflow has no authentication (--no-auth): anyone on this machine can use it"
    return (
        "mlflow runs without authentication (started before it became the default); "
        "`tipsv2 stack down` and `up` turn it on, `up --no-auth` keeps it off"
    )


def run_down(args: argparse.Namespace) -> int:
    from components import stack, stack_serve

    try:
        served = stack_serve.down(args.home)  # first: it reads from MLflow and the gateway
        actions = stack.down(args.home)
    except stack.StackError as e:
        print(f"tipsv2 stack down: error: {e}", file=sys.stderr)
        return 1
    for name, action in actions.items():
        print(f"{name:<7} {action}")
    if served != "not running":
        print(f"{'serve':<7} {served}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from components import stack, stack_serve

    status = stack.status(args.home)
    serve = stack_serve.status(args.home)  # optional: shown when it was ever started
    if args.json:
        print(json.dumps(status.to_json() | ({"serve": serve} if serve else {}), indent=2))
    else:
        _print_status(status)
        if serve:
            version = serve.get("version") or "-"
            print(
                f"{'serve':<7} {serve['state']:<10} {serve['url']:<24} model {serve['model']} "
                f"version {version}"
            )
    return 0 if status.healthy else 1
