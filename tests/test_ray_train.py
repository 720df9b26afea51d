"""Ray Train: fault tolerance with a real kill, relaunch, and a real two-node cluster.

Every run goes through the real `tipsv2 train` console script. The reference is an
uninterrupted Ray run with the same seed: the loop is exactly resumable, so a run that
loses a worker (or its driver) and resumes from a checkpoint must end with the very same
weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tipsv2_core.data.synth_dataset import write_synthetic_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]
TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))
RAY = str(Path(sys.executable).with_name("ray"))
STEPS, EVERY = 40, 5
TINY = {
    "stages.0.steps": STEPS,
    "stages.0.batch_size": 8,
    "run.checkpoint_every": EVERY,
    "run.keep_checkpoints": 20,
    "run.log_every": 5,
    "data.workers": 0,
    "heads.out_dim": 256,
    "heads.hidden_dim": 64,
    "heads.bottleneck_dim": 32,
}
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raydata") / "synth"
    return write_synthetic_dataset(out, 160, 112, seed=5, progress=False)


def train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    cmd = [TIPSV2, "train", "--recipe", "demo", "--data", str(data), "--out", str(out)]
    for key, value in TINY.items():
        cmd += ["--set", f"{key}={value}"]
    return [*cmd, "--quiet", "--no-track", *extra]


def summary_of(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def attempts(run: Path) -> list[dict]:
    path = run / "attempts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def checkpointed(run: Path, step: int) -> bool:
    return (run / "checkpoints" / f"step_{step:08d}" / "COMPLETE").is_file()


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("ref") / "run"
    res = subprocess.run(train_cmd(data, out), capture_output=True, text=True, env=ENV)
    summary = summary_of(res)
    assert summary["steps"] == STEPS and summary["resumed_from"] == 0
    assert summary["attempts"] == 1 and summary["ray_startup_s"] > 0
    return weights(out)


def test_a_killed_worker_is_restarted_and_resumes_from_the_checkpoint(data, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(data, out, "--max-failures", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    wait_for(lambda: checkpointed(out, EVERY), 300, "the first checkpoint")
    victim = attempts(out)[0]["pid"]
    os.kill(victim, signal.SIGKILL)  # the Ray Train worker process itself
    stdout, stderr = proc.communicate(timeout=600)
    summary = summary_of(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert summary["steps"] == STEPS and summary["attempts"] == 2
    first, second = attempts(out)
    assert first["pid"] == victim and second["pid"] != victim
    # The restarted worker continued from a checkpoint, not from step 0 ...
    assert second["resume_step"] >= EVERY and second["resume_step"] % EVERY == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, STEPS + 1, 5))  # each logged once, none lost
    # ... and ended exactly where the uninterrupted run did.
    final = weights(out)
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final)


def test_a_relaunch_of_the_same_run_resumes(data, reference, tmp_path):
    out = tmp_path / "run"
    # Ray's own processes (raylet, agents) leave the driver's process group; a temp dir
    # of this test's own finds them after the kill, so none outlives the test holding
    # Ray's default ports (a later cluster's job agent could not bind them).
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths
    env = {**ENV, "RAY_TMPDIR": temp_dir}
    proc = subprocess.Popen(
        train_cmd(data, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        wait_for(lambda: checkpointed(out, 2 * EVERY), 300, "the second checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its in-process Ray go down
        proc.wait(timeout=60)
    finally:
        _stop_cluster(temp_dir)
    assert not (out / "final").exists()
    res = subprocess.run(train_cmd(data, out), capture_output=True, text=True, env=ENV)
    summary = summary_of(res)
    assert summary["resumed_from"] >= 2 * EVERY and summary["steps"] == STEPS
    final = weights(out)
    assert all(torch.equal(final[k], reference[k]) for k in final)


def _stop_cluster(temp_dir: str) -> None:
    """Stops the Ray processes of this test's cluster only (`ray stop` would stop every
    Ray on the machine)."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or ()):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_through_the_ray_jobs_api(data, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths
    port, dash = _free_port(), _free_port()
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = [RAY, "start", "--head", "--port", str(port), "--temp-dir", temp_dir, *common]
    head += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
    head += ["--dashboard-port", str(dash)]
    try:
        subprocess.run(head, check=True, capture_output=True, env=ENV, timeout=180)
        worker = [RAY, "start", "--address", f"127.0.0.1:{port}", *common]
        subprocess.run(worker, check=True, capture_output=True, env=ENV, timeout=180)
        client = JobSubmissionClient(f"http://127.0.0.1:{dash}")
        out = tmp_path / "run"
        cmd = train_cmd(data, out, "--workers", "2", "--ray-address", "auto")
        job = client.submit_job(
            entrypoint=" ".join(cmd),
            runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
        )
        end = time.monotonic() + 600
        while (status := client.get_job_status(job)) not in {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.STOPPED,
        }:
            assert time.monotonic() < end, "the job did not finish in 10 minutes"
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-3000:]
        summary = json.loads(logs.strip().splitlines()[-1])
        assert summary["workers"] == 2 and summary["steps"] == STEPS
        ranks = {a["rank"]: a for a in attempts(out)}
        assert set(ranks) == {0, 1}
        # One worker per node: each node has one CPU and each worker asks for one.
        assert ranks[0]["node_id"] != ranks[1]["node_id"]
        assert (out / "final" / "COMPLETE").is_file()
    finally:
        _stop_cluster(temp_dir)


def test_pipeline_steps_attach_to_a_running_cluster_through_the_jobs_api(data, tmp_path):
    """The DAG's training steps with `ray_address` set: inputs staged on the shared
    folder, `tipsv2 train|distill` run as Ray jobs on the cluster, the finished run copied
    into the step's output, the staging removed; a job that fails in the cluster raises
    with its id and log tail and leaves no output."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from components.ray_jobs import RayJobError
    from components.steps import train_model

    tok = tmp_path / "tok"
    cmd = [TIPSV2, "data", "tokenizer", "--data", str(data), "--vocab-size", "300"]
    made = subprocess.run([*cmd, "--out", str(tok)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths
    port, dash = _free_port(), _free_port()
    head = [RAY, "start", "--head", "--port", str(port), "--temp-dir", temp_dir, "--num-cpus",
            "2", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--include-dashboard",
            "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash)]  # fmt: skip
    # The job agent on ports of its own: another Ray on this machine may hold the default
    # ones, and a head whose agent cannot bind accepts no job ("No available agent").
    head += ["--dashboard-agent-listen-port", str(_free_port()),
             "--dashboard-agent-grpc-port", str(_free_port()),
             "--runtime-env-agent-port", str(_free_port())]  # fmt: skip
    # The cluster's image has `tipsv2` on PATH; here, the venv's bin.
    env = {**ENV, "PATH": f"{Path(TIPSV2).parent}:{ENV.get('PATH', '')}"}
    shared = tmp_path / "shared"
    small = [f"{k}={v}" for k, v in TINY.items() if k.startswith(("heads.", "data."))]
    common = {"steps": 2, "batch_size": 8, "overrides": small, "track": False,
              "ray_address": f"http://127.0.0.1:{dash}", "shared_dir": str(shared)}  # fmt: skip
    try:
        subprocess.run(head, check=True, capture_output=True, env=env, timeout=180)
        teacher = tmp_path / "teacher"
        doc = train_model(
            "pretrain", str(teacher), str(data), str(tok / "tokenizer.model"),
            version="v-test", **common,
        )  # fmt: skip
        assert doc["steps"] == 2 and doc["ray_job_id"].startswith("tipsv2-pretrain-")
        meta = json.loads((teacher / "final" / "meta.json").read_text())
        assert meta["step"] == 2 and meta["data_version"] == "v-test"
        assert (teacher / "tokenizer.model").is_file() and not (teacher / "ray").exists()

        student = tmp_path / "student"
        doc = train_model(
            "distill", str(student), str(data), str(tok / "tokenizer.model"),
            teacher=str(teacher / "final"), student_variant="nano14", **common,
        )  # fmt: skip
        assert (student / "final" / "COMPLETE").is_file() and doc["variant"] == "nano14"

        broken = tmp_path / "broken.model"
        broken.write_bytes(b"not a sentencepiece model")
        with pytest.raises(RayJobError) as e:
            train_model("pretrain", str(tmp_path / "bad"), str(data), str(broken), **common)
        assert "ended FAILED" in str(e.value) and "tokenizer" in str(e.value).lower()
        assert not (tmp_path / "bad").exists()
        assert list(shared.iterdir()) == []  # every staging folder removed

        client = JobSubmissionClient(f"http://127.0.0.1:{dash}")
        statuses = sorted(j.status for j in client.list_jobs())
        assert statuses == sorted([JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED])
    finally:
        _stop_cluster(temp_dir)


def test_checkpoints_persist_to_s3_on_the_stack_gateway(data, s3_env, tmp_path):
    from components.storage import Storage

    out = tmp_path / "run"
    cmd = train_cmd(data, out, "--storage", "s3://tipsv2/ray", "--run-name", "s3run")
    cmd[cmd.index("stages.0.steps=40")] = "stages.0.steps=10"
    res = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **s3_env})
    summary = summary_of(res)
    assert summary["storage"] == "s3://tipsv2/ray" and summary["steps"] == 10
    files = Storage(environ=s3_env).list_files("s3://tipsv2/ray/s3run")
    # Ray's copies of the checkpoints at steps 5 and 10, each complete.
    for step in (5, 10):
        assert f"step_{step:08d}/COMPLETE" in files and f"step_{step:08d}/meta.json" in files
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    assert all(secret not in p.read_text(errors="ignore") for p in out.rglob("*.json*"))


def test_local_paths_reach_the_workers_absolute(tmp_path, monkeypatch):
    """Ray's workers run elsewhere: a DVC stage's relative `data/synth` must arrive
    absolute; URIs pass through, and the caller's config is left alone."""
    from components.ray_train import absolute_paths
    from tipsv2_core.recipes import get_recipe

    monkeypatch.chdir(tmp_path)
    cfg = get_recipe("distill_demo", distill=True)
    cfg.data.path = "data/synth"
    cfg.data.tokenizer = "file://data/tokenizer/tokenizer.model"
    cfg.distill.teacher = "s3://bucket/teacher/final"
    out = absolute_paths(cfg)
    assert out.data.path == str(tmp_path / "data" / "synth")
    assert out.data.tokenizer == str(tmp_path / "data" / "tokenizer" / "tokenizer.model")
    assert out.distill.teacher == "s3://bucket/teacher/final"
    assert cfg.data.path == "data/synth"


def test_job_submission_waits_for_the_heads_job_agent():
    """A just-started head answers 'No available agent' until its job agent is up: the
    submission is retried then, and any other error is raised at once."""
    from components.ray_jobs import _submit

    class Head:
        def __init__(self, failures: list[str]):
            self.failures, self.calls = failures, 0

        def submit_job(self, **job):
            self.calls += 1
            if self.failures:
                raise RuntimeError(self.failures.pop(0))
            return job["submission_id"]

    busy = "Request failed with status code 500: No available agent to submit job, please try again"
    head = Head([busy, busy])
    assert _submit(head, retry_s=30, submission_id="j1") == "j1" and head.calls == 3
    head = Head(["Request failed with status code 400: bad runtime_env"])
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        _submit(head, retry_s=30, submission_id="j2")
    assert head.calls == 1
    head = Head([busy] * 100)
    with pytest.raises(RuntimeError, match="No available agent"):
        _submit(head, retry_s=0.5, submission_id="j3")
