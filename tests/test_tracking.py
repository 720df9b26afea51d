"""`components.tracking` and `tipsv2 runs` against a real MLflow server and the SQLite default.

The server is the local stack's (`components.stack`: `mlflow server` on 127.0.0.1 with
artifacts proxied into the S3 gateway), started once for the module; the embedded default
is a `sqlite:///…/mlflow.db` store in a temporary TIPSV2_HOME. Nothing of MLflow is mocked:
request counts come from the tracker's own `log_batch` counter and from the server's access
log, and values are read back through `MlflowClient`. The outage test kills the server and
lets `tipsv2 stack up` bring it back on the same port, so it runs after the others that
use the server (tests run in file order).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from components import stack
from components.settings import read_env_file
from components.tracking import (
    REDACTED,
    Scrubber,
    Tracker,
    client_for,
    end_pipeline_run,
    flatten_config,
    readable_key,
    sanitize_key,
)
from tests.conftest import logged_in, stack_credentials
from tipsv2_core.config import TrainConfig, apply_overrides, to_dict

# MLflow's SQLAlchemy store trips a deprecation warning of SQLAlchemy 2.1 (research notes §c).
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")
ROOT = Path(__file__).resolve().parents[1]
TIPSV2 = Path(sys.executable).with_name("tipsv2")
LOGGER = "components.tracking"


@pytest.fixture(scope="module", autouse=True)
def _no_telemetry():
    """MLflow telemetry off for the whole module, module-scoped fixtures included."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    """No tracking settings leaking in from the caller's shell."""
    for name in ("MLFLOW_TRACKING_URI", "TIPSV2_PIPELINE_RUN_ID", "TIPSV2_IMAGE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def stack_home(tmp_path_factory) -> Path:
    """The local stack (S3 gateway + MLflow server) in a fresh TIPSV2_HOME."""
    home = tmp_path_factory.mktemp("stackhome")
    start = time.monotonic()
    stack.up(home)
    print(f"stack up in {time.monotonic() - start:.1f} s")
    with logged_in(home):  # its MLflow server wants the generated credentials
        yield home
    stack.down(home)


@pytest.fixture(scope="module")
def stack_env(stack_home) -> dict[str, str]:
    return read_env_file(stack_home / "stack" / "stack.env")


@pytest.fixture(scope="module")
def sqlite_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sqlitehome")


@pytest.fixture(params=["sqlite", "server"])
def backend(request) -> str:
    """A tracking URI: the embedded SQLite store, then the stack's MLflow server."""
    if request.param == "sqlite":
        return f"sqlite:///{request.getfixturevalue('sqlite_home') / 'mlflow.db'}"
    return request.getfixturevalue("stack_env")["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[TrainConfig, list[dict]]:
    """A real (tiny) `run_training` run: its resolved config and its metrics rows.

    When the loop accepts `on_log`, the rows are those it handed to the callback;
    until then they are read back from `metrics.jsonl` (the same dicts).
    """
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset
    from tipsv2_core.recipes import get_recipe
    from tipsv2_core.train.loop import run_training
    from tipsv2_core.train.runs import pretrain

    d = tmp_path_factory.mktemp("train")
    write_synthetic_dataset(
        str(d / "synth"), num_images=48, image_size=112, seed=0, shard_size=48, progress=False
    )
    cfg = apply_overrides(
        get_recipe("demo"),
        [
            f"data.path={d / 'synth'}",
            "stages.0.steps=4",
            "stages.0.batch_size=4",
            "stages.0.global_size=28",
            "stages.0.local_size=14",
            "data.num_local=1",
            "data.workers=0",
            "data.text_max_len=16",
            "data.tokenizer_vocab=200",
            "heads.out_dim=32",
            "heads.hidden_dim=16",
            "heads.bottleneck_dim=8",
            "run.checkpoint_every=100",
            "run.log_every=1",
            "run.data_version=dvc-md5-0123abcd",
        ],
    )
    rows: list[dict] = []
    if "on_log" in inspect.signature(run_training).parameters:
        pretrain(cfg, d / "run", progress=False, on_log=rows.append)
    else:
        pretrain(cfg, d / "run", progress=False)
        rows = [json.loads(line) for line in (d / "run" / "metrics.jsonl").read_text().split()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    return cfg, rows


def head_sha() -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def new_pipeline_id() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def synthetic_rows(keys: list[str], n: int, start: int = 1) -> list[dict]:
    """`n` rows shaped like run_training's, with values that identify step and key."""
    return [
        {"step": s, **{k: s + i / 100 for i, k in enumerate(keys)}} for s in range(start, start + n)
    ]


def server_requests(home: Path, path: str) -> int:
    """How many requests to `path` the stack's MLflow server has logged (uvicorn access log)."""
    text = (home / "stack" / "logs" / "mlflow.log").read_text(errors="replace")
    return len(re.findall(rf'"POST {re.escape(path)} HTTP', text))


# --------------------------------------------------------------------------- runs, lineage


@pytest.mark.integration
def test_parent_and_step_runs_carry_lineage_config_and_system_info(
    backend, trained, monkeypatch, tmp_path
):
    cfg, rows = trained
    monkeypatch.setenv("TIPSV2_IMAGE", "registry.local/tipsv2:test")
    pid = new_pipeline_id()
    with Tracker(
        "train",
        config=cfg,
        pipeline_run_id=pid,
        tracking_uri=backend,
        checkpoint_uri="s3://tipsv2/runs/x/final",
        world_size=1,
    ) as train:
        for row in rows:
            train.as_callback()(row)
    with Tracker("evaluate", pipeline_run_id=pid, tracking_uri=backend) as ev:
        ev.log_metrics({"eval/zeroshot_seg/synth/miou": 0.25}, step=cfg.total_steps)
    assert train.run_id and ev.run_id and train.run_id != ev.run_id
    assert train.parent_run_id == ev.parent_run_id  # found by its pipeline_run_id tag

    client = client_for(backend)
    parent = client.get_run(train.parent_run_id)
    run = client.get_run(train.run_id)
    sha = head_sha() or "unknown"
    for r in (parent, run):
        assert r.data.tags["git_sha"] == sha
        assert r.data.tags["data_version"] == "dvc-md5-0123abcd"
        assert r.data.tags["pipeline_run_id"] == pid
        assert r.data.tags["image"] == "registry.local/tipsv2:test"
    assert parent.info.run_name == pid and "mlflow.parentRunId" not in parent.data.tags
    assert run.info.run_name == f"{pid}/train" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["step"] == "train"
    assert run.data.tags["checkpoint_uri"] == "s3://tipsv2/runs/x/final"
    assert client.get_run(ev.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id

    # The resolved config, flattened, plus system info.
    params = run.data.params
    assert params["model.variant"] == cfg.model.variant
    assert float(params["optim.lr"]) == cfg.optim.lr
    assert params["stages.0.steps"] == "4"
    assert params["data.global_scale"] == ",".join(str(v) for v in cfg.data.global_scale)
    import torch

    assert params["system.torch"] == torch.__version__
    assert params["system.cpu_count"] == str(os.cpu_count())
    assert params["system.world_size"] == "1"
    assert params["system.devices"]
    # ... and as an artifact, identical to the config written next to the checkpoint.
    local = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    doc = json.loads(Path(local).read_text())
    assert doc == json.loads(json.dumps(to_dict(cfg)))

    # Every term of every row arrived, at its step, plus the derived step time.
    for key in rows[0]:
        if key == "step":
            continue
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in history) == [
            (r["step"], pytest.approx(r[key])) for r in rows
        ], key
    step_times = client.get_metric_history(run.info.run_id, "train/step_time_s")
    assert [m.step for m in sorted(step_times, key=lambda m: m.step)] == [2, 3, 4]
    assert all(m.value >= 0 for m in step_times)
    ev_run = client.get_run(ev.run_id)
    assert ev_run.data.metrics["eval/zeroshot_seg/synth/miou"] == 0.25
    # Steps leave the parent running; the orchestrator ends it.
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"
    assert end_pipeline_run(pid, tracking_uri=backend) == parent.info.run_id
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.integration
def test_config_resolved_after_start(backend, trained):
    """A tracker built from a job spec gets its config (and world size) after entering."""
    cfg, _ = trained
    with Tracker("train", pipeline_run_id=new_pipeline_id(), tracking_uri=backend) as t:
        t.log_config(cfg, world_size=4)
        t.set_checkpoint_uri("s3://tipsv2/runs/y/step_00000004")
    run = client_for(backend).get_run(t.run_id)
    assert run.data.params["system.world_size"] == "4"
    assert run.data.params["model.variant"] == cfg.model.variant
    assert run.data.tags["data_version"] == "dvc-md5-0123abcd"
    assert run.data.tags["checkpoint_uri"] == "s3://tipsv2/runs/y/step_00000004"
    assert [f.path for f in client_for(backend).list_artifacts(t.run_id)] == ["config.json"]


@pytest.mark.integration
def test_concurrent_steps_share_one_parent(backend):
    """Two step processes starting at once both create a parent; one parent survives."""
    pid = new_pipeline_id()
    trackers = [
        Tracker(step, pipeline_run_id=pid, tracking_uri=backend, background=False)
        for step in ("train", "evaluate", "export")
    ]
    barrier = threading.Barrier(len(trackers))

    def start(t: Tracker) -> None:
        barrier.wait()
        t.start()

    threads = [threading.Thread(target=start, args=(t,)) for t in trackers]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    for t in trackers:
        assert t.close()
    parents = {t.parent_run_id for t in trackers}
    assert len(parents) == 1
    client = client_for(backend)
    exp = client.get_experiment_by_name("tipsv2")
    active = client.search_runs(
        [exp.experiment_id], f"tags.tipsv2_kind = 'pipeline' and tags.pipeline_run_id = '{pid}'"
    )
    assert [r.info.run_id for r in active] == list(parents)


@pytest.mark.integration
def test_a_process_that_exits_mid_step_ends_its_run_killed(sqlite_home):
    """A step process that exits without closing its run (a Ray worker shut down by an
    aborted run) did not finish: the exit hook ends the run KILLED, never FINISHED."""
    uri = f"sqlite:///{sqlite_home / 'mlflow.db'}"
    code = (
        "import sys; from components.tracking import Tracker\n"
        f"t = Tracker('train', pipeline_run_id={new_pipeline_id()!r}, tracking_uri={uri!r})\n"
        "t.start(); t.log_step({'step': 1, 'loss': 1.0}); print(t.run_id); sys.exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    run = client_for(uri).get_run(done.stdout.split()[-1])
    assert run.info.status == "KILLED"
    assert run.data.metrics["train/loss"] == 1.0  # what was buffered still reached the store


# --------------------------------------------------------------------------- batching


@pytest.mark.integration
def test_metrics_are_sent_in_batches(backend, trained, stack_home):
    """120 rows of ~16 values: a handful of log_batch requests, never one per value."""
    _, rows = trained
    keys = [k for k in rows[0] if k != "step"]
    synth = synthetic_rows(keys, 120)
    per_row = len(keys) + 1  # + train/step_time_s, derived from the second row on
    before = {
        p: server_requests(stack_home, p)
        for p in ("/api/2.0/mlflow/runs/log-batch", "/api/2.0/mlflow/runs/log-metric")
    }
    tracker = Tracker(
        "train",
        params={"note": "batching"},
        pipeline_run_id=new_pipeline_id(),
        tracking_uri=backend,
        flush_every=25,
        flush_interval_s=3600,
        background=False,
    )
    with tracker:
        assert tracker.run_id is not None and tracker.stats.batches == 0  # the run only
        for i, row in enumerate(synth, 1):
            tracker.log_step(row)
            # Exactly on every 25th row; the params go with the first flush.
            assert tracker.stats.batches == (i >= 25) + i // 25
    values = 120 * per_row - 1
    assert tracker.stats.metrics_sent == values
    assert tracker.stats.batches == 1 + 4 + 1  # params, 4 full flushes, the rest at close
    client = client_for(backend)
    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 121))
    assert {m.step: m.value for m in history}[77] == pytest.approx(
        77 + keys.index("train/loss") / 100
    )
    if backend.startswith("http"):
        # The server saw as many log-batch requests as the tracker made, and no single-value
        # requests at all.
        time.sleep(0.5)  # the access log line is written after the response
        assert (
            server_requests(stack_home, "/api/2.0/mlflow/runs/log-batch")
            - before["/api/2.0/mlflow/runs/log-batch"]
            == tracker.stats.batches
        )
        assert (
            server_requests(stack_home, "/api/2.0/mlflow/runs/log-metric")
            == before["/api/2.0/mlflow/runs/log-metric"]
        )


@pytest.mark.integration
def test_background_flush_on_interval_and_log_step_is_cheap(backend):
    tracker = Tracker(
        "train",
        pipeline_run_id=new_pipeline_id(),
        tracking_uri=backend,
        flush_every=10_000,
        flush_interval_s=0.5,
    )
    with tracker:
        start = time.perf_counter()
        for row in synthetic_rows(["train/loss", "train/lr"], 50):
            tracker.log_step(row)
        per_call = (time.perf_counter() - start) / 50
        assert per_call < 0.005  # buffering only: the thread does the network
        deadline = time.monotonic() + 30
        while tracker.stats.metrics_sent < 149 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tracker.stats.metrics_sent == 149  # sent by the interval, before close
    history = client_for(backend).get_metric_history(tracker.run_id, "train/lr")
    assert len(history) == 50


# --------------------------------------------------------------------------- secrets


@pytest.mark.integration
def test_no_secret_reaches_params_tags_metrics_or_artifacts(
    backend, stack_home, stack_env, monkeypatch, tmp_path
):
    """S3 credentials in the environment, and on purpose in config fields, never arrive."""
    if backend.startswith("http"):  # the stack's real credentials
        key, secret = stack_env["AWS_ACCESS_KEY_ID"], stack_env["AWS_SECRET_ACCESS_KEY"]
    else:
        key, secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 20)
    cfg = TrainConfig()
    cfg.data.tokenizer = secret  # a field that should never hold one, but does
    cfg.data.path = f"s3://{key}:{secret}@tipsv2/data"
    cfg.distill.teacher = f"s3://tipsv2/{key}/teacher"
    forbidden = [key, secret, "hf_" + "x" * 20, "hunter2-hunter2", "tok-9876543210", "user:pw"]
    if backend.startswith("http"):  # and the server's own, which the client sends
        forbidden.append(stack_env["MLFLOW_TRACKING_PASSWORD"])
    with Tracker(
        "train",
        config=cfg,
        pipeline_run_id=new_pipeline_id(),
        tracking_uri=backend,
        checkpoint_uri=f"s3://tipsv2/ckpt?secret={secret}",
        params={"db_password": "hunter2-hunter2", "endpoint": "http://user:pw@host:9000"},
        tags={"note": f"trained with {key}", "api_token": "tok-9876543210"},
    ) as tracker:
        tracker.log_step({"step": 1, f"train/{secret}": 1.0, "train/loss": 0.5})
        tracker.log_metrics({f"eval/{key}/miou": 0.3}, step=1)
        tracker.log_text(f"report for {key}: secret={secret}\n", "report.txt")
        tracker.set_tags({"AWS_SECRET_ACCESS_KEY": secret})

    client = client_for(backend)
    texts = []
    for run_id in (tracker.run_id, tracker.parent_run_id):
        run = client.get_run(run_id)
        texts += [*run.data.params, *run.data.params.values()]
        texts += [*run.data.tags, *run.data.tags.values()]
        texts += list(run.data.metrics)
        dst = tmp_path / run_id
        dst.mkdir()
        local = Path(client.download_artifacts(run_id, "", str(dst)))
        texts += [p.read_text(errors="replace") for p in local.rglob("*") if p.is_file()]
    assert len(texts) > 50
    leaks = [(s, t[:80]) for t in texts for s in forbidden if s in t]
    assert leaks == []
    # Scrubbed, not dropped: the places still say something was there.
    run = client.get_run(tracker.run_id)
    assert run.data.params["data.tokenizer"] == REDACTED
    assert run.data.params["data.path"] == f"s3://{REDACTED}@tipsv2/data"
    assert run.data.params["db_password"] == REDACTED
    assert run.data.params["endpoint"] == f"http://{REDACTED}@host:9000"
    assert run.data.tags["api_token"] == REDACTED
    assert run.data.tags["AWS_SECRET_ACCESS_KEY"] == REDACTED
    assert run.data.tags["note"] == f"trained with {REDACTED}"
    assert run.data.metrics["train/loss"] == 0.5
    assert run.data.params["model.variant"] == "nano14"  # ordinary values untouched
    if backend.startswith("http"):  # nor does the server's own log (access lines, paths)
        server_log = (stack_home / "stack" / "logs" / "mlflow.log").read_text(errors="replace")
        assert [s for s in forbidden if s in server_log] == []


# ------------------------------------------------------------------ standalone tipsv2 train

TINY_TRAIN = [
    "stages.0.batch_size=4", "stages.0.global_size=28", "stages.0.local_size=14",
    "data.num_local=1", "data.workers=0", "data.text_max_len=16", "data.tokenizer_vocab=200",
    "heads.out_dim=32", "heads.hidden_dim=16", "heads.bottleneck_dim=8", "run.log_every=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    out = tmp_path_factory.mktemp("standalone") / "synth"
    write_synthetic_dataset(str(out), num_images=40, image_size=112, seed=1, progress=False)
    return out


def start_train(
    stack_env, data: Path, out: Path, *extra: str, ray: bool = False
) -> subprocess.Popen[str]:
    """`tipsv2 train` as a user starts it, logging to the stack's MLflow server (with its
    credentials in the environment, as after `source stack.env`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "AWS_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", TIPSV2_STACK="off")
    env.update({k: stack_env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
    env.pop("TIPSV2_PIPELINE_RUN_ID", None)
    argv = [str(TIPSV2), "train", "--data", str(data), "--out", str(out), "--quiet"]
    argv += [] if ray else ["--no-ray"]
    argv += ["--tracking-uri", stack_env["MLFLOW_TRACKING_URI"], "--experiment", "standalone"]
    for item in (*TINY_TRAIN, *extra):
        argv += ["--set", item]
    pipe = subprocess.PIPE

    def terminal_sigint() -> None:
        # A shell's background job starts with SIGINT ignored, and Python keeps an ignored
        # SIGINT ignored: give the child the default that a terminal's Ctrl-C meets.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(
        argv, env=env, text=True, stdout=pipe, stderr=pipe, preexec_fn=terminal_sigint
    )


def standalone_runs(uri: str, out: Path) -> tuple[Any, Any]:
    """(parent, step run) of the standalone training into `out`."""
    client = client_for(uri)
    exp = client.get_experiment_by_name("standalone")
    if exp is None:
        raise ValueError("no experiment yet")
    (step,) = client.search_runs(
        [exp.experiment_id], f"tags.checkpoint_uri = '{out.resolve()}'", max_results=5
    )
    return client.get_run(step.data.tags["mlflow.parentRunId"]), step


@pytest.mark.integration
def test_standalone_train_names_its_runs_logs_its_dataset_and_ends_them(
    stack_env, train_data, tmp_path
):
    from components.datasets import dataset_name
    from components.versioning import data_version

    out = tmp_path / "run"
    proc = start_train(stack_env, train_data, out, "stages.0.steps=2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    parent, step = standalone_runs(stack_env["MLFLOW_TRACKING_URI"], out)
    assert step.info.run_name == "pretrain-nano14"  # as the pipeline's step names it
    assert re.fullmatch(r"pretrain-nano14-\d{8}-\d{6}-[0-9a-f]{6}", parent.info.run_name)
    assert (parent.info.status, step.info.status) == ("FINISHED", "FINISHED")
    (given,) = step.inputs.dataset_inputs
    version = data_version(train_data)
    assert given.dataset.name == dataset_name(train_data)
    assert given.dataset.digest == version == step.data.tags["data_version"]
    assert str(train_data) in given.dataset.source
    assert [t.value for t in given.tags if t.key == "mlflow.data.context"] == ["training"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "how, ray",
    [
        ("error", False),
        ("SIGINT", False),
        ("SIGTERM", False),
        # Ray Train's driver handles SIGINT itself (abort, then sys.exit) and its worker,
        # which holds the step run, is stopped without closing it.
        pytest.param("SIGINT", True, marks=pytest.mark.slow, id="SIGINT-ray"),
    ],
)
def test_standalone_train_never_leaves_its_runs_running(how, ray, stack_env, train_data, tmp_path):
    """A failed run ends FAILED, an interrupted or terminated one KILLED: parent and step."""
    out = tmp_path / "run"
    uri = stack_env["MLFLOW_TRACKING_URI"]
    try:
        _interrupt_and_check(how, ray, stack_env, train_data, out, uri)
    finally:  # a failed check must not leave a 100,000-step training behind
        for proc in _started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _started.clear()


_started: list[subprocess.Popen[str]] = []


def _interrupt_and_check(how: str, ray: bool, stack_env, train_data, out: Path, uri: str) -> None:
    if how == "error":  # τ = 1e-45 (valid) overflows the logits: NaN loss at step 1
        proc = start_train(stack_env, train_data, out, "model.init_temperature=1e-45")
        _started.append(proc)
    else:
        proc = start_train(stack_env, train_data, out, "stages.0.steps=100000", ray=ray)
        _started.append(proc)
        deadline = time.monotonic() + 240
        # Interrupted mid-training: once the step run has logged a loss.
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(ValueError):  # no run yet
                if "train/loss" in standalone_runs(uri, out)[1].data.metrics:
                    break
            time.sleep(0.5)
        proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    parent, step = standalone_runs(uri, out)
    want = "FAILED" if how == "error" else "KILLED"
    assert (parent.info.status, step.info.status) == (want, want), err[-2000:]
    if how == "error":
        assert proc.returncode == 1 and "clip_cls1_loss is nan at step 1" in err
    else:
        assert proc.returncode == 130 and err.strip().endswith("tipsv2 train: interrupted")


# --------------------------------------------------------------------------- outages


@pytest.mark.integration
def test_nothing_listening_never_stops_training_and_the_buffer_is_bounded(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again: nothing listens there
    tracker = Tracker(
        "train",
        pipeline_run_id=new_pipeline_id(),
        tracking_uri=f"http://127.0.0.1:{dead}",
        flush_every=1,
        max_buffered=50,
        backoff_s=0.05,
        max_backoff_s=0.1,
        close_timeout_s=0.5,
        background=False,
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        start = time.monotonic()
        tracker.start()
        assert tracker.run_id is None  # deferred until the server answers
        for row in synthetic_rows(["train/loss", "train/lr", "train/images_per_s"], 20):
            tracker.log_step(row)  # every row tries to flush inline, and fails fast
            time.sleep(0.01)
        assert time.monotonic() - start < 10
        assert tracker.flush() is False
        assert tracker.stats.failed_flushes >= 3
        assert tracker.stats.dropped == 20 * 4 - 1 - 50  # 3 terms + step time, 50 kept
        assert tracker.close() is False
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot reach" in m for m in messages) == 1, messages
    assert sum("buffer full" in m for m in messages) == 1
    assert any("could not be sent" in m for m in messages)


@pytest.mark.integration
@pytest.mark.slow
def test_server_outage_is_survived_and_metrics_arrive_after_recovery(stack_home, stack_env, caplog):
    """Kill the MLflow server mid-run, keep training, restart it: nothing is lost."""
    uri = stack_env["MLFLOW_TRACKING_URI"]
    pid = new_pipeline_id()
    tracker = Tracker(
        "train",
        pipeline_run_id=pid,
        tracking_uri=uri,
        flush_every=5,
        flush_interval_s=0.2,
        backoff_s=0.2,
        max_backoff_s=1.0,
    )
    rows = synthetic_rows(["train/loss", "train/lr"], 60)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        tracker.start()
        for row in rows[:10]:
            tracker.log_step(row)
        assert tracker.flush() is True

        server = stack.status(stack_home).service("mlflow")
        os.killpg(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while stack.status(stack_home).service("mlflow").running:
            assert time.monotonic() < deadline
            time.sleep(0.1)

        slowest = 0.0
        for row in rows[10:]:  # "training" goes on while the background flushes fail
            t0 = time.perf_counter()
            tracker.log_step(row)
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.03)
        assert slowest < 0.05
        late = Tracker("evaluate", pipeline_run_id=pid, tracking_uri=uri, background=False)
        late.start()  # a step that starts during the outage
        assert late.run_id is None
        late.log_metrics({"eval/retrieval/synth/i2t_r@1": 0.5}, step=60)
        assert tracker.flush() is False and late.flush() is False
        assert tracker.stats.failed_flushes >= 2

        assert stack.up(stack_home)["mlflow"] == "started"  # same port as before
        assert tracker.flush() is True
        assert late.flush() is True
        assert tracker.close() and late.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot reach" in m for m in messages) == 2, messages  # once per tracker
    assert sum("reachable again" in m for m in messages) == 2

    client = client_for(uri)
    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 61))
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    run = client.get_run(late.run_id)
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert run.data.metrics["eval/retrieval/synth/i2t_r:1"] == 0.5


# --------------------------------------------------------------------------- tipsv2 runs


def tipsv2(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIPSV2), *argv], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory) -> tuple[dict[str, str], dict[str, str]]:
    """A TIPSV2_HOME whose embedded SQLite store holds two pipeline runs to compare."""
    home = tmp_path_factory.mktemp("clihome")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    ids = {}
    for name, lr, loss, miou in (("base", 1e-3, 0.5, 0.2), ("hi-lr", 2e-3, 0.4, 0.25)):
        cfg = TrainConfig()
        cfg.optim.lr = lr
        with Tracker("train", config=cfg, pipeline_run_id=name, tracking_uri=uri) as t:
            for row in synthetic_rows(["train/loss"], 3):
                t.log_step({**row, "train/loss": row["train/loss"] + 1})
            t.log_step({"step": 4, "train/loss": loss})
            t.log_metrics({"eval/zeroshot_seg/synth/miou": miou}, step=4)
        ids[name] = t.run_id
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_TRACKING", "AWS_", "TIPSV2_"))
    }
    env.update(TIPSV2_HOME=str(home), TIPSV2_STACK="off", MLFLOW_DISABLE_TELEMETRY="true")
    return env, ids


@pytest.mark.integration
def test_runs_list_uses_the_embedded_default(cli_home):
    env, ids = cli_home
    res = tipsv2("runs", "list", env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = lines[0].split()
    for col in ("NAME", "STATUS", "optim.lr", "train/loss", "zeroshot_seg/synth/miou"):
        assert col in header
    child = next(line for line in lines if "hi-lr/train" in line)
    assert "└" in child and ids["hi-lr"][:12] in child and "FINISHED" in child
    assert child.split()[-3:] == ["0.002", "0.4", "0.25"]
    # the parent is listed right above its step run
    assert lines[lines.index(child) - 1].split()[0] == "hi-lr"

    res = tipsv2("runs", "list", "--limit", "1", "--json", env=env)
    assert res.returncode == 0, res.stderr
    (only,) = json.loads(res.stdout)
    assert only["name"] == "hi-lr/train"  # newest first
    res = tipsv2("runs", "list", "--experiment", "nope", env=env)
    assert res.returncode == 2 and "no experiment named 'nope'" in res.stderr


@pytest.mark.integration
def test_runs_show_and_compare(cli_home):
    env, ids = cli_home
    res = tipsv2("runs", "show", "base/train", env=env)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert ids["base"] in out and "FINISHED" in out
    assert re.search(r"^\s+optim\.lr\s+0\.001$", out, re.M)
    assert re.search(r"^\s+pipeline_run_id\s+base$", out, re.M)
    assert re.search(r"^\s+train/loss\s+0\.5\s+4\s+4$", out, re.M)  # last value, step, points

    # By name and by id prefix: params that differ, final metrics with deltas.
    res = tipsv2("runs", "compare", "base/train", ids["hi-lr"][:10], env=env)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert re.search(r"^\s+optim\.lr\s+0\.001\s+0\.002$", out, re.M)
    assert "model.variant" not in out  # equal params are hidden
    assert re.search(r"^\s+train/loss\s+0\.5\s+0\.4 \(-0\.1, -20\.0%\)$", out, re.M)
    assert re.search(
        r"^\s+eval/zeroshot_seg/synth/miou\s+0\.2\s+0\.25 \(\+0\.05, \+25\.0%\)$", out, re.M
    )

    res = tipsv2("runs", "compare", "base/train", "--json", env=env)
    assert res.returncode == 2 and "at least two runs" in res.stderr
    res = tipsv2("runs", "show", "no-such-run", env=env)
    assert res.returncode == 2 and "no run" in res.stderr


@pytest.mark.integration
def test_runs_list_against_the_server(stack_home, stack_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "AWS_"))}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env |= stack_credentials(stack_home)  # as after `source stack.env`
    res = tipsv2(
        "runs", "list", "--tracking-uri", stack_env["MLFLOW_TRACKING_URI"], "--limit", "5",
        env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 1 + 5 and "/train" in res.stdout


# --------------------------------------------------------------------------- no services


@pytest.mark.unit
def test_scrubber_rules():
    s = Scrubber.from_environ(
        {"AWS_SECRET_ACCESS_KEY": "abc", "MY_API_TOKEN": "tok123456", "FOO_TOKEN": "1"}
    )
    assert s.text("x-abc-y tok123456") == f"x-{REDACTED}-y {REDACTED}"
    assert s.text("step 1") == "step 1"  # short values of credential-named variables stay
    assert s.pair("data.tokenizer", "tok.model") == ("data.tokenizer", "tok.model")
    for name in ("api_token", "db.password", "AWS_SECRET_ACCESS_KEY", "secret", "hf-token"):
        assert s.pair(name, "v") == (name, REDACTED)
    assert (
        s.text("s3://k:s@b/p and https://u@h/") == f"s3://{REDACTED}@b/p and https://{REDACTED}@h/"
    )
    assert s.tree({"a": {"password": "p", "l": ["abc"]}}) == {
        "a": {"password": REDACTED, "l": [REDACTED]}
    }


@pytest.mark.unit
def test_keys_and_config_flattening():
    assert sanitize_key("eval/retrieval/coco/i2t_r@1") == "eval/retrieval/coco/i2t_r:1"
    for name in ("eval/retrieval/coco/i2t_r@1", "eval/retrieval/coco/t2i_r@10", "train/loss"):
        assert readable_key(sanitize_key(name)) == name  # reversible
    assert sanitize_key("a:b@c") == "a_b:c"  # a name's own `:` is not read back as `@`
    assert sanitize_key("/train//loss%") == "train/loss_"
    flat = flatten_config(TrainConfig())
    assert flat["model.variant"] == "nano14" and flat["stages.0.steps"] == 100
    assert flat["data.global_scale"] == (0.32, 1.0)
    assert not any(isinstance(v, dict) for v in flat.values())
    assert math.isclose(flat["optim.lr"], 1e-3)
