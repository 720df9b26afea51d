"""The model server as an optional service of the local stack (`tipsv2 stack up --serve`).

It runs beside the S3 gateway and MLflow, follows `models:/NAME@champion` in the stack's
registry and reads artifacts from its gateway, with the stack's env file: the MLflow
server's credentials reach it in its environment (MLflow's client sends
`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`), never on its command line, which
names the tracking URI only. Optional: the
stack is healthy without it, and `stack.status` is unchanged; this module adds its own
pid file, state and log under the same `$TIPSV2_HOME/stack/` folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from components import stack, stack_procs
from components.settings import is_healthy, read_env_file
from components.stack_ports import HOST, choose_port

SERVICE = "serve"
DEFAULT_MODEL = "models:/tipsv2@champion"
SERVE_TIMEOUT_S = 120.0  # the server is live before its model is loaded


def _state_file(p: stack.StackPaths) -> Path:
    return p.root / "serve.json"


def _read(p: stack.StackPaths) -> dict[str, object]:
    try:
        return json.loads(_state_file(p).read_text())
    except (OSError, ValueError):
        return {}


def url(home: Path | None = None) -> str | None:
    """The running server's base URL, or None."""
    p = stack.paths(home)
    state = _read(p)
    if stack_procs.running_pid(p, SERVICE) is None or "port" not in state:
        return None
    return f"http://{HOST}:{state['port']}"


def up(
    home: Path | None = None,
    *,
    model: str = DEFAULT_MODEL,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = SERVE_TIMEOUT_S,
) -> str:
    """Starts the server unless it runs; needs the stack's MLflow. Returns what it did."""
    p = stack.paths(home)
    if not p.env_file.is_file():
        raise stack.StackError("the stack has no env file: run `tipsv2 stack up` first")
    env = read_env_file(p.env_file)
    if stack_procs.running_pid(p, SERVICE) is not None:
        return "already running"
    state = _read(p)
    taken = {v["port"] for v in stack.read_state(p).values()}
    chosen = choose_port(SERVICE, port, state.get("port"), taken)  # type: ignore[arg-type]
    cmd = [
        sys.executable, "-m", "components.serving", "--model", model,
        "--host", HOST, "--port", str(chosen),
        "--tracking-uri", env["MLFLOW_TRACKING_URI"], *extra_args,
    ]  # fmt: skip
    stack_procs.write_private(_state_file(p), json.dumps({"port": chosen, "model": model}) + "\n")
    child = stack_procs.child_env(env | {"TIPSV2_HOME": str(p.home)})
    pid = stack_procs.spawn(p, SERVICE, cmd, child)
    health = f"http://{HOST}:{chosen}/v2/health/live"
    secrets = [env.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD")]
    stack_procs.wait_healthy(p, SERVICE, pid, health, timeout, secrets)
    return "started"


def down(home: Path | None = None) -> str:
    p = stack.paths(home)
    pid = stack_procs.running_pid(p, SERVICE)
    if pid is None:
        return "not running"
    stack_procs.terminate(pid)
    p.pid_file(SERVICE).unlink(missing_ok=True)
    return "stopped"


def status(home: Path | None = None) -> dict[str, object] | None:
    """{state, url, pid, model, version, ready, last_swap} or None if never started here."""
    p = stack.paths(home)
    state = _read(p)
    if not state:
        return None
    pid = stack_procs.running_pid(p, SERVICE)
    base = f"http://{HOST}:{state['port']}"
    out: dict[str, object] = {
        "name": SERVICE,
        "state": "stopped",
        "url": base,
        "pid": pid,
        "model": state.get("model"),
        "log": str(p.log_file(SERVICE)),
    }
    if pid is None:
        return out
    live = is_healthy(f"{base}/v2/health/live")
    out["state"] = "running" if live else "unhealthy"
    if live:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{base}/api/status", timeout=5) as r:
                doc = json.load(r)
            out |= {k: doc.get(k) for k in ("ready", "version", "precision", "last_swap")}
        except (OSError, ValueError):
            pass
    return out
