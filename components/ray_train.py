"""Pretraining and distillation on Ray Train: one worker on a laptop, many on a cluster.

A `TorchTrainer` runs `tipsv2_core`'s training loop on every worker. Ray sets up the
process group (gloo on CPU, NCCL on GPU); the loop then shards each global batch by rank,
gathers contrastive negatives from every rank and averages gradients (see
`tipsv2_core/train/loop.py`). So the distributed run is the same loop as `--no-ray`.

Checkpoints: rank 0 writes each one into the run directory (`<out>/checkpoints/step_N`,
COMPLETE last) and every rank then reports it to Ray Train, which persists it to the run's
storage (`storage`: a local path, default `<out>/ray`, or `s3://bucket/prefix` on any S3
endpoint from `AWS_ENDPOINT_URL`). On a (re)start, each worker first restores Ray's latest
checkpoint into the run directory when that is newer than what the directory holds, then
the loop resumes from the newest complete checkpoint. This covers a worker killed in the
middle of a run (`FailureConfig(max_failures)` restarts the group), a relaunch of the same
run name, and a worker landing on a node whose disk never saw the run.

Every worker start is appended to `<out>/attempts.jsonl` (rank, pid, node, the step it
resumed from): the record of failures and restarts an operator reads first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from components.settings import disable_telemetry
from tipsv2_core.config import TrainConfig, from_dict, to_dict
from tipsv2_core.errors import TrainingDiverged
from tipsv2_core.uri import strip_file_scheme

Kind = Literal["pretrain", "distill"]
# Environment for Ray (besides settings.TELEMETRY_OFF): no token prompt for a local
# cluster, and the checksum mode of S3 gateways that reject streaming checksums (pyarrow's
# uploads of Ray checkpoints).
RAY_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
}
ATTEMPTS_FILE = "attempts.jsonl"
TRACKING_FILE = "tracking.json"  # rank 0's tracker outcome, for the driver to report
DIVERGED_FILE = "diverged.json"  # rank 0's note of a diverged training, for the driver


@dataclass
class RayTrainSpec:
    """How to run: workers and their resources, where, and how to survive failures."""

    workers: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 1.0  # with use_gpu
    # None: on a Ray started here, the machine's cores shared out between the workers
    # (one worker gets them all, as the bare loop would); on a cluster, 1.
    cpus_per_worker: float | None = None
    address: str | None = None  # an existing cluster ("auto", "ray://…", "host:port")
    storage: str | None = None  # Ray's run storage; default <out>/ray
    max_failures: int = 0
    run_name: str | None = None  # default: the run directory's name
    tracking: dict[str, Any] = field(default_factory=dict)  # passed to the rank-0 tracker

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker is None:
            local = max(1, (os.cpu_count() or 1) // self.workers)
            self.cpus_per_worker = 1.0 if self.address else float(local)
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be -1 (no limit) or more, got {self.max_failures}")


@dataclass
class RayTrainResult:
    out: Path
    final: Path
    steps: int
    storage: str
    checkpoint: str | None  # Ray's copy of the last checkpoint
    attempts: list[dict[str, Any]]  # every worker start of this call, in order
    metrics: dict[str, Any]
    startup_s: float  # ray.init + trainer construction, before the first worker runs
    fit_s: float
    tracking: dict[str, Any] = field(default_factory=dict)  # Tracker.outcome of rank 0


def storage_target(storage: str) -> tuple[str, Any]:
    """(storage_path, pyarrow filesystem or None) for Ray's RunConfig.

    `s3://bucket/prefix` uses the endpoint and credentials of the standard AWS variables,
    never parameters; a plain path or `file://` is made absolute.
    """
    if storage.startswith("s3://"):
        from pyarrow import fs

        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        kw: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kw |= {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
        return storage.removeprefix("s3://").rstrip("/"), fs.S3FileSystem(**kw)
    return str(Path(strip_file_scheme(storage)).resolve()), None


def _restore_into(out: Path, checkpoint: Any) -> int | None:
    """Copies Ray's checkpoint into out/checkpoints/step_N unless a complete one is there.

    Returns the step it holds. Each rank copies into its own temporary folder and renames
    it into place, so ranks sharing a disk never see a half-copied checkpoint.
    """
    from tipsv2_core.checkpoint import is_complete
    from tipsv2_core.train.checkpointing import checkpoint_dir

    with checkpoint.as_directory() as src:
        meta = json.loads((Path(src) / "meta.json").read_text())
        step = int(meta["step"])
        target = checkpoint_dir(out, step)
        if not is_complete(target):
            tmp = target.with_name(f".{target.name}.restore-{os.getpid()}")
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            try:
                os.rename(tmp, target)
            except OSError:  # another rank on this disk got there first
                shutil.rmtree(tmp, ignore_errors=True)
    return step


def _latest_local_step(out: Path) -> int:
    from tipsv2_core.train.checkpointing import latest_checkpoint

    latest = latest_checkpoint(out)
    return int(latest.name.removeprefix("step_")) if latest is not None else 0


def _worker_loop(config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs."""
    import ray
    import ray.train
    import torch

    cfg = from_dict(config["cfg"])
    out = Path(config["out"])
    # Ray limits a worker's OpenMP threads to its CPUs; say the same to torch explicitly.
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    out.mkdir(parents=True, exist_ok=True)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    restored = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        restored = _restore_into(out, ckpt)
    with open(out / ATTEMPTS_FILE, "a") as f:
        entry = {
            "launch": config["launch"],
            "rank": rank,
            "world": ctx.get_world_size(),
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "ray_checkpoint_step": restored,
            # Float reductions depend on the thread count: a bit-exact re-run needs it.
            "torch_threads": torch.get_num_threads(),
            "resume_step": _latest_local_step(out),
            "time": time.time(),
        }
        f.write(json.dumps(entry) + "\n")

    last: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        tracker = None
        if rank == 0 and config.get("tracking"):  # one writer: rank 0 tracks the run
            from components.tracking import Tracker

            tracker = stack.enter_context(Tracker(**config["tracking"]))
            tracker.log_config(cfg, world_size=ctx.get_world_size())
        status = "FAILED"
        try:
            _run_worker(config, cfg, out, rank, tracker, last)
            status = "FINISHED"
        except TrainingDiverged as e:
            # Deterministic: a retry from the last checkpoint would diverge again, so the
            # worker ends normally (no Ray restart) and the driver raises the same error.
            if rank == 0:
                doc = {"launch": config["launch"], "message": str(e)}
                (out / DIVERGED_FILE).write_text(json.dumps(doc) + "\n")
        finally:
            if tracker is not None:  # the driver repeats what the worker's log says
                outcome = tracker.outcome(tracker.close(status))
                outcome["launch"] = config["launch"]
                (out / TRACKING_FILE).write_text(json.dumps(outcome) + "\n")


def _run_worker(
    config: dict[str, Any], cfg: TrainConfig, out: Path, rank: int, tracker: Any, last: dict
) -> None:
    import ray.train
    import ray.train.torch

    from tipsv2_core.train.runs import distill, pretrain

    def on_log(row: dict[str, float]) -> None:
        last.update(row)
        if tracker is not None:
            tracker.log_step(row)

    def on_checkpoint(path: Path | None, step: int) -> None:
        from ray.train import Checkpoint

        metrics = {"step": step, **{k: v for k, v in last.items() if k != "step"}}
        checkpoint = Checkpoint.from_directory(str(path)) if path is not None else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{step:08d}")
        if tracker is not None and path is not None:
            tracker.set_checkpoint_uri(str(path))

    run = distill if config["kind"] == "distill" else pretrain
    run(
        cfg,
        out,
        resume=True,
        progress=config.get("progress", False) and rank == 0,
        on_log=on_log,
        on_checkpoint=on_checkpoint,
        device=ray.train.torch.get_device(),
    )


def _init_ray(spec: RayTrainSpec) -> None:
    import ray

    disable_telemetry(extra=RAY_ENV_DEFAULTS)
    if ray.is_initialized():
        return
    if spec.address:
        ray.init(address=spec.address, log_to_driver=False)
    else:
        cpus = max(int(spec.workers * spec.cpus_per_worker), os.cpu_count() or 1)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its local data, tokenizer and teacher paths made absolute. Ray's workers
    run in their own working directory, where a path relative to the caller's (a DVC
    stage's `data/synth`) names nothing. URIs (s3://...) are left as they are."""
    cfg = from_dict(to_dict(cfg))

    def absolute(path: str) -> str:
        path = strip_file_scheme(path)
        return path if not path or "://" in path else str(Path(path).resolve())

    cfg.data.path = absolute(cfg.data.path)
    cfg.data.tokenizer = absolute(cfg.data.tokenizer)
    cfg.distill.teacher = absolute(cfg.distill.teacher)
    return cfg


def train_on_ray(
    cfg: TrainConfig,
    out: str | os.PathLike,
    kind: Kind = "pretrain",
    spec: RayTrainSpec | None = None,
    progress: bool = False,
    on_event: Callable[[str], None] | None = None,
) -> RayTrainResult:
    """Runs pretraining or distillation of `cfg` into `out` on Ray Train.

    Resumes when `out` (or Ray's storage for the run name) holds a checkpoint. Raises
    `ray.train.TrainingFailedError` when the workers fail more than `max_failures` times.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = spec or RayTrainSpec()
    cfg = absolute_paths(cfg)
    out = Path(strip_file_scheme(out)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    say = on_event or (lambda _msg: None)
    launch = uuid.uuid4().hex[:12]  # tells this call's worker starts from earlier ones
    t0 = time.perf_counter()
    _init_ray(spec)
    storage = spec.storage or str(out / "ray")
    storage_path, filesystem = storage_target(storage)
    resources = {"CPU": spec.cpus_per_worker}
    if spec.use_gpu:
        resources["GPU"] = spec.gpus_per_worker
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "cfg": to_dict(cfg),
            "out": str(out),
            "kind": kind,
            "progress": progress,
            "tracking": spec.tracking,
            "launch": launch,
            "cpus_per_worker": spec.cpus_per_worker,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.workers, use_gpu=spec.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        run_config=RunConfig(
            name=spec.run_name or out.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(cfg.run.keep_checkpoints, 1)),
        ),
    )
    startup = time.perf_counter() - t0
    say(f"ray: {spec.workers} worker(s), storage {storage}, start-up {startup:.1f} s")
    result = _fit(trainer)
    fit_s = time.perf_counter() - t0 - startup
    diverged = _read_launch_file(out / DIVERGED_FILE, launch)
    if diverged:
        raise TrainingDiverged(diverged["message"])
    attempts = [
        entry
        for line in (out / ATTEMPTS_FILE).read_text().splitlines()
        if line and (entry := json.loads(line))["launch"] == launch
    ]
    return RayTrainResult(
        tracking=_tracking_outcome(out, launch),
        out=out,
        final=out / "final",
        steps=int(result.metrics.get("step", 0)) if result.metrics else 0,
        storage=storage,
        checkpoint=result.checkpoint.path if result.checkpoint is not None else None,
        attempts=attempts,
        metrics=dict(result.metrics or {}),
        startup_s=startup,
        fit_s=fit_s,
    )


def _fit(trainer: Any) -> Any:
    """`trainer.fit()`, where Ctrl-C is a KeyboardInterrupt as everywhere else.

    Ray Train's driver puts in its own SIGINT handler, which aborts the run and then
    ends the process with `sys.exit(0)` (exit status 0 or 1, the caller's `finally`
    blocks seeing a SystemExit): here that is turned back into the KeyboardInterrupt
    it is, so that callers end their tracking runs as KILLED and exit 130. Ray's
    handler is removed afterwards (it would abort a controller that no longer exists).
    """
    import signal

    before = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    except SystemExit as e:  # raised only by Ray's SIGINT handler inside fit()
        raise KeyboardInterrupt("Ray Train run aborted by SIGINT") from e
    finally:
        if before is not None:  # None: a handler not set from Python; leave it
            with contextlib.suppress(ValueError):  # not the main thread: nothing was set
                signal.signal(signal.SIGINT, before)


def _read_launch_file(path: Path, launch: str) -> dict[str, Any]:
    """The JSON document rank 0 wrote at `path` during launch `launch` (empty: none)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and doc.get("launch") == launch else {}


def _tracking_outcome(out: Path, launch: str) -> dict[str, Any]:
    """What rank 0's tracker of this launch reported (empty: it did not track)."""
    return _read_launch_file(out / TRACKING_FILE, launch)


def tracking_warnings(outcome: Mapping[str, Any]) -> list[str]:
    """The lines a tracker's outcome deserves on the terminal (none when all went well)."""
    if not outcome:
        return []
    uri, lines = outcome.get("tracking_uri", "?"), []
    if outcome.get("failed_flushes"):
        lines.append(
            f"tracking: {uri} could not be reached during the run ({outcome['failed_flushes']} "
            f"failed sends, {outcome.get('outage_s', 0):.0f} s of outage); values were "
            "buffered and retried"
        )
    if not outcome.get("delivered", True):
        run = outcome.get("run_id") or "(never created)"
        lines.append(
            f"tracking: {outcome.get('undelivered_values', 0)} metric values never reached "
            f"{uri}; MLflow run {run} may be left RUNNING; metrics.jsonl holds every value"
        )
    return lines


def run_summary(result: RayTrainResult, workers: int) -> dict[str, Any]:
    """What a finished Ray run reports (the closing line of `tipsv2 train`, the result
    file of a Ray job): where the model is, steps, restarts, storage, start-up time and
    the last logged losses (`loss`, `clip_loss`, ... without the `train/` prefix)."""
    metrics_file = result.out / "metrics.jsonl"
    history = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
    first = next((a for a in reversed(result.attempts) if a["rank"] == 0), {})
    return {
        "out": str(result.out),
        "final": str(result.final),
        "steps": result.steps,
        "resumed_from": first.get("resume_step", 0),
        "workers": workers,
        "attempts": sum(1 for a in result.attempts if a["rank"] == 0),
        "storage": result.storage,
        "ray_startup_s": round(result.startup_s, 1),
        **last_losses(history),
    }


def last_losses(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The losses of the last training row of `metrics.jsonl` (probe rows carry none),
    without the `train/` prefix, rounded."""
    last = next((r for r in reversed(history) if "train/loss" in r), {})
    return {k.removeprefix("train/"): round(v, 4) for k, v in last.items() if k.endswith("loss")}
