"""The local stack's service processes: started in sessions of their own, found again from
pid files, stopped by process group.

A service (the S3 gateway, MLflow, the optional model server) is spawned as the leader of
a new session so that it outlives the CLI that started it; its pid file names that
leader, and `down` signals the whole group (MLflow forks workers). Liveness checks read
`/proc`, where a zombie counts as gone and a reused pid must still name its service.
The files a service writes here (pid files, logs) are created mode 600.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from components.settings import TELEMETRY_OFF, is_healthy
from tipsv2_core.errors import UserError

if TYPE_CHECKING:
    from components.stack import StackPaths

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

STOP_TIMEOUT_S = 20.0


class StackError(UserError, RuntimeError):
    """A service could not be started, stopped or found; the message says what to do."""


# Processes started by this interpreter, so that `down` in the same process (the tests)
# can reap them instead of leaving zombies that still answer kill(pid, 0).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


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


def alive(pid: int) -> bool:
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


def running_pid(p: StackPaths, service: str) -> int | None:
    """The pid (and process group) of the service if its pid file names a live process of
    that service, or a session of its own that still has live members.

    A service is started as the leader of a new session; its workers (MLflow's) stay in
    that session. A leader killed on its own (`kill -9 PID`) leaves them answering on
    the service's port, so the service counts as running until the whole group is gone.
    """
    pid = _read_pid(p, service)
    if pid is None:
        return None
    if alive(pid):
        return pid if _is_service(pid, service) else None
    return pid if session_members(pid) else None


def session_members(sid: int) -> list[int]:
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


def other_mlflow_on(db: Path) -> int | None:
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


def terminate(pgid: int, timeout: float = STOP_TIMEOUT_S) -> None:
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


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(CHILD_ENV)
    env.update(extra)
    return env


def spawn(p: StackPaths, service: str, cmd: Sequence[str], env: Mapping[str, str]) -> int:
    """Starts `cmd` in its own session (it outlives the CLI; `down` signals the group)."""
    log_path = p.log_file(service)
    with open_private(log_path, "ab") as log:
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
    write_private(p.pid_file(service), f"{proc.pid}\n")
    return proc.pid


def log_tail(p: StackPaths, service: str, secret_values: Sequence[str], lines: int = 15) -> str:
    try:
        text = p.log_file(service).read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = "\n".join(text.splitlines()[-lines:])
    for value in secret_values:  # belt and braces: no service should ever log them
        if value:
            tail = tail.replace(value, "***")
    return tail


def wait_healthy(
    p: StackPaths, service: str, pid: int, url: str, timeout: float, secret_values: Sequence[str]
) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if is_healthy(url):
            return
        if not alive(pid):
            p.pid_file(service).unlink(missing_ok=True)
            raise StackError(
                f"{service} exited during start-up; last lines of {p.log_file(service)}:\n"
                + log_tail(p, service, secret_values)
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    terminate(pid)
    p.pid_file(service).unlink(missing_ok=True)
    raise StackError(
        f"{service} not healthy at {url} after {timeout:.0f} s (stopped it); last lines of "
        f"{p.log_file(service)}:\n" + log_tail(p, service, secret_values)
    )


@contextlib.contextmanager
def open_private(path: Path, mode: str) -> Iterator[IO[Any]]:
    """Opens `path` created with mode 600 (the umask cannot widen it)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, mode) as f:
        yield f


def write_private(path: Path, text: str) -> None:
    """Writes `text` atomically into a mode-600 file (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open_private(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
