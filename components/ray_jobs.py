"""Training on an existing Ray cluster through the Ray Jobs API: how a pipeline step
attaches to the RayCluster of `infra/k8s` instead of starting Ray inside its own pod.

A KFP step's inputs are files in its own pod, invisible to the cluster's nodes, so the
step stages them on storage that every node mounts (the ReadWriteMany volume at
/mnt/tipsv2 on a cluster; any shared folder here) together with the resolved config
(`to_dict` JSON, its paths pointing at the staged copies), submits the Python entry
point `components.train_entry` as a Ray job, follows it to its end, reads the result file
the job wrote, and copies the finished run directory back into its output. A failed job
raises with the job id and the tail of its log, and leaves the step's output untouched.

    result = train_as_ray_job("pretrain", out, cfg,
                              RayJobTarget("http://tipsv2-ray-head-svc:8265", "/mnt/tipsv2/jobs"))
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from components.train_entry import JobOptions
from tipsv2_core.errors import UserError
from tipsv2_core.uri import strip_file_scheme

if TYPE_CHECKING:
    from tipsv2_core.config import TrainConfig

__all__ = ["RayJobError", "RayJobResult", "RayJobTarget", "train_as_ray_job"]

LOG_TAIL = 40  # lines of the job's log quoted in an error
SUBMIT_RETRY_S = 120.0  # how long a just-started head may take to accept jobs


class RayJobError(UserError, RuntimeError):
    """The Ray job failed, was stopped, or did not finish in time."""


@dataclass(frozen=True)
class RayJobTarget:
    """Where the job runs: the cluster's dashboard (Jobs API) address, e.g.
    `http://tipsv2-ray-head-svc:8265`, and a folder that both this process and every Ray
    node see at the same path."""

    address: str
    shared_dir: str
    timeout_s: float = 24 * 3600.0
    poll_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.address.startswith(("http://", "https://")):
            raise ValueError(
                f"ray job address {self.address!r}: expected the dashboard's "
                "http(s)://HOST:PORT (the Jobs API), e.g. http://tipsv2-ray-head-svc:8265"
            )
        if not self.shared_dir:
            raise ValueError("a Ray job needs a shared folder that every Ray node mounts")


@dataclass(frozen=True)
class RayJobResult:
    job_id: str
    summary: dict[str, Any]  # the job's result file: steps, losses, workers, ...
    seconds: float


def _stage(src: Path, dst: Path) -> str:
    """Copies a file or folder onto the shared storage; returns its path there."""
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return str(dst)


def _submit(client: Any, *, retry_s: float = SUBMIT_RETRY_S, **job: Any) -> str:
    """`client.submit_job(**job)`, retried while the head has no job agent yet: a cluster
    that just started (or restarted its head) answers 500 "No available agent" for a
    few seconds before it accepts jobs."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def train_as_ray_job(
    kind: Literal["pretrain", "distill"],
    out: str | Path,
    cfg: TrainConfig,
    target: RayJobTarget,
    options: JobOptions | None = None,
    *,
    env: dict[str, str] | None = None,
    on_event: Callable[[str], None] | None = None,
) -> RayJobResult:
    """Runs the resolved, validated `cfg` as a Ray job on `target` (pretraining, or
    distillation of `cfg.distill.teacher`) and puts the finished run directory
    (checkpoints, metrics.jsonl, final/, tokenizer.model) at `out`.

    The config's dataset, tokenizer and teacher are staged on the shared folder and the
    shipped config points at those copies. options: workers, GPUs and tracking of the
    run (components.train_entry.JobOptions); env: variables for the job's processes
    (never credentials: the cluster's pods hold their own).
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tipsv2_core.config import from_dict, to_dict

    say = on_event or (lambda _msg: None)
    out = Path(out)
    tag = f"tipsv2-{kind}-{uuid.uuid4().hex[:12]}"
    stage = Path(target.shared_dir) / tag
    stage.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        staged = from_dict(to_dict(cfg))  # the caller's config stays as it was
        staged.data.path = _stage(Path(strip_file_scheme(cfg.data.path)), stage / "data")
        staged.data.tokenizer = _stage(
            Path(strip_file_scheme(cfg.data.tokenizer)), stage / "tokenizer.model"
        )
        if kind == "distill":
            if not cfg.distill.teacher:
                raise ValueError("distillation needs a teacher checkpoint")
            staged.distill.teacher = _stage(
                Path(strip_file_scheme(cfg.distill.teacher)), stage / "teacher"
            )
        config_file = stage / "config.json"
        config_file.write_text(json.dumps(to_dict(staged), indent=2) + "\n")
        run_dir, result_file = stage / "run", stage / "result.json"
        cmd = ["python", "-m", "components.train_entry", "--config", str(config_file)]
        cmd += ["--kind", kind, "--out", str(run_dir), "--result", str(result_file)]
        cmd += (options or JobOptions()).argv()
        client = JobSubmissionClient(target.address)
        job_id = _submit(
            client,
            entrypoint=shlex.join(cmd),
            submission_id=tag,
            runtime_env={"env_vars": dict(env or {})},
        )
        say(f"ray job {job_id} submitted to {target.address}")
        terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        deadline = time.monotonic() + target.timeout_s
        while (status := client.get_job_status(job_id)) not in terminal:
            if time.monotonic() > deadline:
                client.stop_job(job_id)
                raise RayJobError(f"ray job {job_id} did not finish in {target.timeout_s:.0f} s")
            time.sleep(target.poll_s)
        logs = client.get_job_logs(job_id)
        if status != JobStatus.SUCCEEDED:
            tail = "\n".join(logs.strip().splitlines()[-LOG_TAIL:])
            raise RayJobError(f"ray job {job_id} on {target.address} ended {status.value}:\n{tail}")
        if not (run_dir / "final" / "COMPLETE").is_file() or not result_file.is_file():
            raise RayJobError(
                f"ray job {job_id} succeeded but left no complete model in {run_dir} "
                f"or no result file {result_file.name}"
            )
        summary = json.loads(result_file.read_text())
        # Into the step's output only once complete: a failed copy leaves no half model
        # that a later step could mistake for a finished one.
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns("ray"))
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
        say(f"ray job {job_id} {status.value}; run copied to {out}")
        return RayJobResult(job_id, summary, round(time.perf_counter() - t0, 3))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
