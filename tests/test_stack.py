"""`tipsv2 stack up|down|status` against the real JuiceFS gateway and MLflow server.

One stack per module (starting MLflow costs ~10-30 s on 2 cores), started as a user
starts it, so its MLflow server is behind the generated credentials; the tests run in
file order and the last ones stop and restart it. The unit tests in the middle need no
services.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from components import stack, stack_ports, stack_procs
from components.settings import configure, read_env_file
from components.storage import Storage
from pipelines.cli import stack as stack_cli
from tests.conftest import logged_in

TIPSV2 = Path(sys.executable).with_name("tipsv2")


def tipsv2(*argv: str) -> tuple[int, str]:
    """Runs `tipsv2 stack …` with the group's own parser; returns (exit code, stdout+stderr)."""
    parser = argparse.ArgumentParser(prog="tipsv2")
    stack_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = args.handler(args)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A running stack in a fresh TIPSV2_HOME; stopped when the module is done."""
    h = tmp_path_factory.mktemp("tipsv2home")
    start = time.monotonic()
    rc, out = tipsv2("stack", "--home", str(h), "up")
    assert rc == 0, out
    assert "note:" not in out  # the default: MLflow behind its credentials
    print(f"stack up in {time.monotonic() - start:.1f} s")
    with logged_in(h):  # the module's own MLflow clients, as a shell that sourced stack.env
        yield h
    stack.down(h)


@pytest.fixture(scope="module")
def env(home) -> dict[str, str]:
    return read_env_file(home / "stack" / "stack.env")


def secrets_of(env: dict[str, str]) -> list[str]:
    return [env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["MLFLOW_TRACKING_PASSWORD"]]


@pytest.mark.integration
def test_up_starts_healthy_services_on_loopback(home):
    st = stack.status(home)
    assert st.healthy
    for s in st.services:
        assert s.state == "running"
        assert s.url is not None and s.url.startswith("http://127.0.0.1:")
        assert (home / "stack" / "run" / f"{s.name}.pid").read_text().strip() == str(s.pid)
        assert s.log.is_file() and s.log.parent == home / "stack" / "logs"
    rc, out = tipsv2("stack", "--home", str(home), "status", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["healthy"] is True
    assert {s["name"]: s["state"] for s in data["services"]} == {
        "s3": "running",
        "mlflow": "running",
    }


def _outward_address() -> str | None:
    """This machine's address on its default route (not loopback), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))  # TEST-NET-3: nothing is sent by a UDP connect
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.integration
def test_services_are_not_reachable_on_other_interfaces(home):
    """Both services listen on 127.0.0.1 only (README "Local stack"): other machines
    cannot even ask, whatever the credentials (and MLflow with `--no-auth` has none)."""
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback to try")
    for s in stack.status(home).services:
        port = int(s.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # answers on loopback
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()


@pytest.mark.integration
def test_second_up_reports_already_running(home):
    before = stack.status(home)
    start = time.monotonic()
    rc, out = tipsv2("stack", "--home", str(home), "up")
    assert rc == 0, out
    assert time.monotonic() - start < 10
    assert out.count("already running") == 2, out
    after = stack.status(home)
    assert [s.pid for s in after.services] == [s.pid for s in before.services]


@pytest.mark.integration
def test_env_file_is_private_and_complete(home, env):
    path = home / "stack" / "stack.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "stack").stat().st_mode) == 0o700
    st = stack.status(home)
    assert env["AWS_ENDPOINT_URL"] == st.service("s3").url
    assert env["MLFLOW_S3_ENDPOINT_URL"] == st.service("s3").url
    assert env["MLFLOW_TRACKING_URI"] == st.service("mlflow").url
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "WHEN_REQUIRED"
    assert len(env["AWS_SECRET_ACCESS_KEY"]) >= 20  # generated, not a well-known default
    assert env["AWS_SECRET_ACCESS_KEY"] != "minioadmin"
    assert env["MLFLOW_TRACKING_USERNAME"] and len(env["MLFLOW_TRACKING_PASSWORD"]) >= 20
    assert json.loads((home / "stack" / "state.json").read_text())["mlflow"]["auth"] is True


@pytest.mark.integration
def test_credentials_never_printed_logged_or_on_a_command_line(home, env):
    outputs = [
        tipsv2("stack", "--home", str(home), "status")[1],
        tipsv2("stack", "--home", str(home), "status", "--json")[1],
        tipsv2("stack", "--home", str(home), "up")[1],
    ]
    logs = [p.read_text(errors="replace") for p in (home / "stack" / "logs").iterdir()]
    cmdlines = []
    for s in stack.status(home).services:  # each service's whole session: MLflow's workers
        for pid in _session_pids(s.pid):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                cmdlines.append(cmdline.decode(errors="replace"))
    assert len(cmdlines) >= 2
    for secret in secrets_of(env):
        for text in outputs + logs + cmdlines:
            assert secret not in text


@pytest.mark.integration
def test_console_script_status(home, env):
    """The real entry point knows the group; its output holds no credential."""
    tipsv2_bin = Path(sys.executable).with_name("tipsv2")
    res = subprocess.run(
        [str(tipsv2_bin), "stack", "--home", str(home), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert env["AWS_ENDPOINT_URL"] in res.stdout and env["MLFLOW_TRACKING_URI"] in res.stdout
    for secret in secrets_of(env):
        assert secret not in res.stdout + res.stderr


@pytest.mark.integration
def test_configure_loads_the_healthy_stack(home, env):
    environ: dict[str, str] = {}
    settings = configure(home, environ=environ)
    assert (settings.storage, settings.tracking) == ("stack", "stack")
    assert settings.storage_root == "s3://tipsv2"
    assert settings.tracking_uri == env["MLFLOW_TRACKING_URI"]
    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_REQUEST_CHECKSUM_CALCULATION",
    ):
        assert environ[key] == env[key]
    # What the caller set explicitly wins, and another server never gets the stack's
    # credentials.
    environ = {"MLFLOW_TRACKING_URI": "http://tracking.example"}
    settings = configure(home, environ=environ)
    assert settings.tracking == "environment"
    assert environ["MLFLOW_TRACKING_URI"] == "http://tracking.example"
    assert "MLFLOW_TRACKING_PASSWORD" not in environ
    # The stack's own URL set by hand (without the rest of stack.env) gets them.
    environ = {"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"] + "/"}
    assert configure(home, environ=environ).tracking == "environment"
    assert environ["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_TRACKING_PASSWORD"]
    environ = {"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_TOKEN": "t"}
    configure(home, environ=environ)  # the caller's own credentials win
    assert "MLFLOW_TRACKING_PASSWORD" not in environ
    # And the stack can be switched off.
    environ = {"TIPSV2_STACK": "off"}
    settings = configure(home, environ=environ)
    assert (settings.storage, settings.tracking) == ("embedded", "embedded")


@pytest.fixture(scope="module")
def logged_run(env, tmp_path_factory) -> tuple[str, str, bytes]:
    """(experiment id, run id, artifact bytes) of a run logged through the tracking server."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment("stack-test")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "train/loss", 0.5)
    payload = tmp_path_factory.mktemp("artifact") / "notes.txt"
    payload.write_bytes(b"hello from the stack test\n")
    client.log_artifact(run.info.run_id, str(payload), artifact_path="report")
    client.set_terminated(run.info.run_id)
    return exp, run.info.run_id, payload.read_bytes()


@pytest.mark.integration
def test_mlflow_artifact_lands_in_the_s3_bucket(env, logged_run):
    exp, run_id, payload = logged_run
    uri = f"s3://mlflow/artifacts/{exp}/{run_id}/artifacts/report/notes.txt"
    assert Storage(environ=env).read_bytes(uri) == payload


def _sockets_on(port: str) -> str:
    try:
        ss = subprocess.run(["ss", "-tanpo"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "(no `ss` here to show what holds the port)"
    return "\n".join(line for line in ss.stdout.splitlines() if f":{port} " in line)


@pytest.mark.integration
def test_killed_service_is_restarted_by_up(home):
    before = stack.status(home)
    gw = before.service("s3")
    os.killpg(gw.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while stack.status(home).service("s3").running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stack.status(home).service("s3").running
    rc, out = tipsv2("stack", "--home", str(home), "status")
    assert rc == 1 and "stopped" in out
    rc, out = tipsv2("stack", "--home", str(home), "up")
    assert rc == 0, out
    assert "s3      started" in out and "mlflow  already running" in out
    after = stack.status(home)
    assert after.healthy
    # same port: the env file stays valid (else: what holds the old port, for the log)
    assert after.service("s3").url == gw.url, _sockets_on(gw.url.rsplit(":", 1)[1])


@pytest.mark.integration
def test_down_stops_everything_keeps_data_and_up_restores_it(home, env, logged_run):
    pids = [s.pid for s in stack.status(home).services]
    rc, out = tipsv2("stack", "--home", str(home), "down")
    assert rc == 0 and out.count("stopped") == 2, out
    for pid in pids:
        stat_file = Path(f"/proc/{pid}/stat")
        assert not stat_file.exists() or stat_file.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert list((home / "stack" / "run").iterdir()) == []
    assert (home / "stack" / "s3" / "meta.db").is_file()
    assert (home / "stack" / "mlflow.db").is_file()
    rc, out = tipsv2("stack", "--home", str(home), "status")
    assert rc == 1 and out.count("stopped") == 2
    assert configure(home, environ={}).storage == "embedded"
    assert tipsv2("stack", "--home", str(home), "down")[1].count("not running") == 2

    rc, out = tipsv2("stack", "--home", str(home), "up")
    assert rc == 0, out
    assert read_env_file(home / "stack" / "stack.env") == env  # same ports and credentials
    from mlflow import MlflowClient

    exp, run_id, _ = logged_run
    run = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_run(run_id)
    assert run.data.metrics["train/loss"] == 0.5
    names = Storage(environ=env).list_files(f"s3://mlflow/artifacts/{exp}")
    assert f"{run_id}/artifacts/report/notes.txt" in names


# --------------------------------------------------------------------------- no services


@pytest.mark.unit
def test_configure_without_a_stack_uses_embedded_defaults(tmp_path):
    environ: dict[str, str] = {}
    settings = configure(tmp_path / "h", environ=environ)
    assert (settings.storage, settings.tracking) == ("embedded", "embedded")
    assert settings.storage_root == str(tmp_path / "h" / "storage")
    assert environ == {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'h' / 'mlflow.db'}"}
    assert "AWS_ACCESS_KEY_ID" not in environ


@pytest.mark.unit
def test_a_stale_env_file_is_not_loaded(tmp_path):
    """An env file whose services do not answer is ignored, credentials included."""
    (tmp_path / "stack").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    (tmp_path / "stack" / "stack.env").write_text(
        f"export AWS_ACCESS_KEY_ID=k\nexport AWS_SECRET_ACCESS_KEY=s\n"
        f"export AWS_ENDPOINT_URL=http://127.0.0.1:{port}\n"
        f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}\n"
    )
    environ: dict[str, str] = {}
    settings = configure(tmp_path, environ=environ)
    assert (settings.storage, settings.tracking) == ("embedded", "embedded")
    assert set(environ) == {"MLFLOW_TRACKING_URI"}


@pytest.mark.unit
def test_read_env_file_forms(tmp_path):
    path = tmp_path / "e.env"
    path.write_text("# c\n\nexport A=1\nB = 'two'\nC=\"x=y\"\nnot a line\n")
    assert read_env_file(path) == {"A": "1", "B": "two", "C": "x=y"}


@pytest.mark.unit
def test_status_of_a_stack_never_started(tmp_path):
    st = stack.status(tmp_path)
    assert not st.healthy
    assert [(s.name, s.state, s.url) for s in st.services] == [
        ("s3", "stopped", None),
        ("mlflow", "stopped", None),
    ]
    assert stack.down(tmp_path) == {"s3": "not running", "mlflow": "not running"}


@pytest.mark.unit
def test_up_on_a_busy_port_fails_clearly(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        rc, out = tipsv2(
            "stack", "--home", str(tmp_path), "up", "--services", "s3", "--s3-port", str(busy)
        )
    assert rc == 1
    assert f"port {busy} on 127.0.0.1 is already in use" in out
    assert not (tmp_path / "stack" / "run" / "s3.pid").exists()


@pytest.mark.unit
def test_the_last_port_is_kept_once_released_and_left_only_when_it_stays_taken(capsys):
    """A service that was just killed may hold its socket for a moment: `up` waits for
    it (the URL in the env file stays valid) and moves only when it stays taken."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", stack_ports.free_port()))
    holder.listen()
    port = holder.getsockname()[1]
    threading.Timer(0.5, holder.close).start()
    t0 = time.monotonic()
    assert stack_ports.choose_port("s3", None, port, exclude=(), wait_s=10) == port
    assert 0.4 < time.monotonic() - t0 < 5
    assert capsys.readouterr().err == ""

    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        moved = stack_ports.choose_port("s3", None, port, exclude=(), wait_s=0.5)
    assert moved != port
    assert f"s3: its last port {port} on 127.0.0.1 is taken; it moves to {moved}" in (
        capsys.readouterr().err
    )


@pytest.mark.unit
def test_stale_pid_file_counts_as_stopped(tmp_path):
    run = tmp_path / "stack" / "run"
    run.mkdir(parents=True)
    (run / "s3.pid").write_text(f"{os.getpid()}\n")  # alive, but not a juicefs process
    (run / "mlflow.pid").write_text("999999999\n")  # no such process
    st = stack.status(tmp_path)
    assert [s.state for s in st.services] == ["stopped", "stopped"]


@pytest.mark.integration
def test_a_killed_leader_leaves_the_service_running_until_down_stops_its_group(home):
    """`kill -9` of the pid `status` shows: MLflow's worker keeps answering, so the service
    still counts as running, `up` starts no second server on its database, and `down`
    stops the whole group."""
    ml = stack.status(home).service("mlflow")
    assert ml.healthy
    members = stack_procs.session_members(ml.pid)
    os.kill(ml.pid, signal.SIGKILL)  # the leader only
    deadline = time.monotonic() + 10
    while Path(f"/proc/{ml.pid}/cmdline").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{ml.pid}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] == "Z":
            break
        time.sleep(0.1)
    workers = [m for m in members if m != ml.pid]
    if not workers:  # a server without worker processes: nothing is left to answer
        pytest.skip("this MLflow server runs without worker processes")
    after = stack.status(home).service("mlflow")
    assert after.running and after.pid == ml.pid
    rc, out = tipsv2("stack", "--home", str(home), "up")
    assert rc == 0 and "mlflow  already running" in out, out
    assert stack_procs.other_mlflow_on(home / "stack" / "mlflow.db") in workers
    assert stack.down(home)["mlflow"] == "stopped"
    assert stack_procs.session_members(ml.pid) == []
    rc, out = tipsv2("stack", "--home", str(home), "up")  # a fresh server, for later tests
    assert rc == 0 and "mlflow  started" in out, out


def _http_status(uri: str, path: str, method: str = "GET", auth: str | None = None) -> int:
    """The HTTP status of one plain request (no MLflow client, no environment)."""
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{uri}{path}", method=method)
    if method == "PUT":
        req.data = b"written by anyone"
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status
    except urllib.error.HTTPError as e:
        return e.code


UPLOAD = "/api/2.0/mlflow-artifacts/artifacts/intruder/x.txt"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


@pytest.mark.integration
def test_default_stack_refuses_requests_and_uploads_without_the_credentials(home, env):
    """`tipsv2 stack up` as a user runs it: the MLflow server answers 401 to every request
    without the generated credentials (its REST API, and an upload through its artifact
    proxy, which would write into the gateway), and they are on no command line and in
    no log."""
    from components.tracking import client_for

    uri, user = env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_USERNAME"]
    password = env["MLFLOW_TRACKING_PASSWORD"]
    assert _http_status(uri, UPLOAD, "PUT") == 401
    assert _http_status(uri, UPLOAD, "PUT", f"{user}:wrong") == 401
    assert _http_status(uri, SEARCH) == 401
    assert _http_status(uri, "/api/2.0/mlflow/runs/search", "POST") == 401
    assert _http_status(uri, "/") == 401  # the UI too
    assert _http_status(uri, "/health") == 200  # the stack's own health check stays open
    s3 = Storage(environ=env)
    assert s3.list_files("s3://mlflow/artifacts/intruder") == []  # nothing landed

    # With them (as configure() loads them), MLflow's own client works as without auth.
    loaded: dict[str, str] = {}
    assert configure(home, environ=loaded).tracking == "stack"
    assert loaded["MLFLOW_TRACKING_PASSWORD"] == password
    client = client_for(uri)
    run = client.create_run(client.create_experiment("auth-test"))
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["note.txt"]
    assert _http_status(uri, UPLOAD, "PUT", f"{user}:{password}") == 200
    assert password not in json.dumps(client.get_run(run.info.run_id).to_dictionary())

    pid = stack.status(home).service("mlflow").pid
    cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes() for p in _session_pids(pid)]
    assert cmdlines and not any(password.encode() in c for c in cmdlines)
    assert any(b"tipsv2-auth" in c for c in cmdlines)  # the app behind BasicAuth
    assert password not in (home / "stack" / "logs" / "mlflow.log").read_text()


def _cli(home: Path, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The real `tipsv2` console script in a clean environment (no MLflow or AWS
    variables of the caller), with TIPSV2_HOME=home and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env |= {"TIPSV2_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", **extra}
    return subprocess.run(
        [str(TIPSV2), *argv], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.integration
def test_the_cli_reaches_the_authenticated_server_and_fails_clearly_without_it(home, env):
    from components.tracking import client_for

    uri = env["MLFLOW_TRACKING_URI"]
    client = client_for(uri)
    exp = client.create_experiment("cli-auth")
    client.set_terminated(client.create_run(exp, run_name="seen-by-the-cli").info.run_id)

    # Found through $TIPSV2_HOME, and given by hand: the stack's credentials come along.
    for argv in (("runs", "list", "--experiment", "cli-auth"),
                 ("runs", "list", "--experiment", "cli-auth", "--tracking-uri", uri)):  # fmt: skip
        res = _cli(home, *argv)
        assert res.returncode == 0, res.stderr
        assert "seen-by-the-cli" in res.stdout
        for secret in secrets_of(env):
            assert secret not in res.stdout + res.stderr

    # Without them (the stack ignored, nothing in the environment): one line, exit 2.
    res = _cli(home, "runs", "list", "--tracking-uri", uri, TIPSV2_STACK="off")
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert "refused the request (401)" in line and "MLFLOW_TRACKING_PASSWORD" in line
    # And with them in the environment, as after `source stack.env`.
    creds = {k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    res = _cli(home, "runs", "list", "--experiment", "cli-auth", "--tracking-uri", uri,
               TIPSV2_STACK="off", **creds)  # fmt: skip
    assert res.returncode == 0 and "seen-by-the-cli" in res.stdout, res.stderr


@pytest.mark.integration
def test_no_auth_sticks_and_an_older_open_server_keeps_running(home, env):
    """`up --no-auth` (a single-user machine) starts MLflow open and says so; the choice
    sticks until `--auth`, which a running server refuses in one line. A state written
    before authentication became the default (`auth: false`, no opt-out) keeps its
    running server as it is, with a one-line note, and gets auth at its next start."""
    uri = env["MLFLOW_TRACKING_URI"]
    state_file = home / "stack" / "state.json"
    assert tipsv2("stack", "--home", str(home), "down")[0] == 0
    rc, out = tipsv2("stack", "--home", str(home), "up", "--no-auth")
    assert rc == 0, out
    assert "note: mlflow has no authentication (--no-auth)" in out
    assert _http_status(uri, SEARCH) == 200
    assert "MLFLOW_TRACKING_PASSWORD" not in read_env_file(home / "stack" / "stack.env")
    assert "(no authentication)" in tipsv2("stack", "--home", str(home), "status")[1]
    assert stack.up(home) == {"s3": "already running", "mlflow": "already running"}
    assert _http_status(uri, SEARCH) == 200  # the opt-out is kept
    rc, out = tipsv2("stack", "--home", str(home), "up", "--auth")
    assert rc == 1
    (line,) = out.strip().splitlines()
    assert "without authentication; `tipsv2 stack down` before switching it" in line

    state = json.loads(state_file.read_text())
    del state["mlflow"]["auth_opt_out"]  # as an older `up` wrote it
    state_file.write_text(json.dumps(state))
    rc, out = tipsv2("stack", "--home", str(home), "up")
    assert rc == 0 and "mlflow  already running" in out, out
    notes = [line for line in out.splitlines() if "note:" in line]
    assert len(notes) == 1 and "started before it became the default" in notes[0]
    assert _http_status(uri, SEARCH) == 200  # still working, as it was

    assert tipsv2("stack", "--home", str(home), "down")[0] == 0
    rc, out = tipsv2("stack", "--home", str(home), "up")
    assert rc == 0 and "note:" not in out, out
    fresh = read_env_file(home / "stack" / "stack.env")
    assert fresh["MLFLOW_TRACKING_URI"] == uri  # same URL, now behind credentials
    assert _http_status(uri, SEARCH) == 401
    login = f"{fresh['MLFLOW_TRACKING_USERNAME']}:{fresh['MLFLOW_TRACKING_PASSWORD']}"
    assert _http_status(uri, SEARCH, auth=login) == 200
    assert stat.S_IMODE((home / "stack" / "stack.env").stat().st_mode) == 0o600


def _session_pids(leader: int) -> list[int]:
    """The processes of `leader`'s session (the server and its workers)."""
    sid = os.getsid(leader)
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) == sid:
                    out.append(int(entry.name))
    return out
