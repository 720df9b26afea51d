"""`tipsv2 train` and `tipsv2 distill`: the TIPSv2 recipe on Ray Train (or one process).

By default a run goes through Ray Train with one worker in an in-process Ray instance:
the same code path as many workers on a cluster (`--workers`, `--ray-address`).
`--no-ray` runs the loop directly in this process, for debugging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from pipelines.cli.common import add_tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="pretrain a TIPSv2 model (CLIP + DINO + iBOT++, head-only EMA)",
        description=(
            "Pretrain with a named recipe. Resumes from the latest complete checkpoint in "
            "--out unless --no-resume. Overrides: --set key=value (e.g. stages.0.steps=50, "
            "loss.ibot_mode=ibot, ema.mode=head_only, data.caption_strategy=one_cls_multi)."
        ),
    )
    _common(train, default_recipe="demo")
    train.set_defaults(handler=run_train, distill=False)

    dist = sub.add_parser(
        "distill",
        help="distil a frozen teacher into a randomly initialised student",
        description=(
            "Distil a teacher (native checkpoint or official npz pair) into a new student "
            "of --student-variant: patch loss on all tokens of an unmasked view, CLS "
            "distillation, and L_CLIP for the student's text tower."
        ),
    )
    _common(dist, default_recipe="distill_demo")
    dist.add_argument("--teacher", help="teacher checkpoint (native dir or official npz prefix)")
    dist.add_argument("--teacher-variant", default=None)
    dist.add_argument(
        "--student-variant", default=None, help="student size (default: the recipe's)"
    )
    dist.set_defaults(handler=run_train, distill=True)


def _common(p: argparse.ArgumentParser, default_recipe: str) -> None:
    p.add_argument(
        "--recipe", default=default_recipe, help=f"recipe name (default {default_recipe})"
    )
    p.add_argument("--data", help="dataset directory (shards + manifest.parquet)")
    p.add_argument("--out", help="run directory: checkpoints, metrics.jsonl, final/")
    p.add_argument(
        "--tokenizer", default=None, help="SentencePiece model (default: train one on the data)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if --out has checkpoints"
    )
    p.add_argument(
        "--accept-changes",
        action="store_true",
        help="resume although the config or data version differ from the checkpoint's "
        "(never a change of model shapes); the changes are printed",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print sizes, FLOPs and memory; train nothing"
    )
    p.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    ray = p.add_argument_group("distributed (Ray Train)")
    ray.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    ray.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (0: CPU, gloo)"
    )
    ray.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs per worker (default: this machine's cores shared out; 1 on a cluster)",
    )
    ray.add_argument(
        "--ray-address", default=None, help="an existing Ray cluster (default: start one here)"
    )
    ray.add_argument(
        "--storage",
        default=None,
        help="Ray's run storage for checkpoints: a path or s3://bucket/prefix (default <out>/ray)",
    )
    ray.add_argument(
        "--max-failures", type=int, default=0, help="worker-group restarts allowed (-1: no limit)"
    )
    ray.add_argument("--run-name", default=None, help="Ray run name (default: the --out folder)")
    ray.add_argument(
        "--no-ray", action="store_true", help="run the loop in this process, without Ray"
    )
    track = p.add_argument_group("tracking (MLflow)")
    track.add_argument("--experiment", default="tipsv2", help="MLflow experiment (default tipsv2)")
    add_tracking_uri(track)
    track.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def build_config(args: argparse.Namespace):
    from tipsv2_core.config import apply_overrides, validate
    from tipsv2_core.recipes import get_recipe
    from tipsv2_core.uri import strip_file_scheme

    cfg = get_recipe(args.recipe, distill=args.distill)
    if args.data:
        cfg.data.path = strip_file_scheme(args.data)
    if args.tokenizer:
        cfg.data.tokenizer = args.tokenizer
    if args.distill:
        if args.teacher:
            cfg.distill.teacher = strip_file_scheme(args.teacher)
        if args.teacher_variant:
            cfg.distill.teacher_variant = args.teacher_variant
        if args.student_variant:
            cfg.model.variant = args.student_variant
    apply_overrides(cfg, args.set)
    if cfg.data.path and not cfg.run.data_version:
        from components.versioning import data_version

        cfg.run.data_version = data_version(cfg.data.path, missing_ok=True)
    return validate(cfg)


def run_train(args: argparse.Namespace) -> int:
    from tipsv2_core.uri import strip_file_scheme

    if args.list_recipes:
        from tipsv2_core.recipes import DISTILL_RECIPES, RECIPES

        for name, make in (DISTILL_RECIPES if args.distill else RECIPES).items():
            cfg = make()
            stages = ", ".join(
                f"{s.name} {s.steps}×{s.batch_size}@{s.global_size}px" for s in cfg.stages
            )
            print(f"{name:<24} {cfg.model.variant:<9} {stages}")
        return 0
    cfg = build_config(args)
    if args.dry_run:
        from tipsv2_core.train.dry_run import dry_run

        if args.distill:
            raise ValueError("--dry-run covers pretraining recipes; run it with `tipsv2 train`")
        print(json.dumps(dry_run(cfg), indent=2))
        return 0
    if not cfg.data.path or not args.out:
        raise ValueError("--data and --out are required (or use --dry-run)")
    if args.distill and not cfg.distill.teacher:
        raise ValueError("--teacher is required for distillation")
    from components.tracking.tags import PIPELINE_RUN_ID_ENV

    out = strip_file_scheme(args.out)
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"{out}: is a file, not a run directory")
    from components.run_guard import guarded_run

    kind = "distill" if args.distill else "pretrain"
    with (
        _sigterm_as_interrupt(),
        guarded_run(
            out, cfg, kind, accept_changes=args.accept_changes, resume=not args.no_resume
        ) as accepted,
    ):
        if accepted:
            said = "; ".join(c.describe() for c in accepted)
            print(f"tipsv2: resuming {out} with accepted changes: {said}", file=sys.stderr)
        tracking = _tracking(args, cfg)
        # A standalone run is a pipeline of one step: it makes the parent run, so it ends
        # it too (a pipeline's orchestrator ends its own, named by $TIPSV2_PIPELINE_RUN_ID).
        owns_parent = bool(tracking) and not os.environ.get(PIPELINE_RUN_ID_ENV)
        status = "FAILED"
        try:
            rc = _train_locked(args, cfg, out, tracking)
            status = "FINISHED"
            return rc
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if owns_parent:
                _end_own_parent(tracking, status)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a CI job's cancel, a pod's stop) ends a run as Ctrl-C does: a
    KeyboardInterrupt, so its MLflow runs end KILLED and its lock is released."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a test calling main()): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _train_locked(args: argparse.Namespace, cfg, out: str, tracking: dict) -> int:
    """The run itself, while this process holds the run directory's lock."""
    if args.no_ray:
        from tipsv2_core.train.runs import distill, pretrain

        run = distill if args.distill else pretrain
        with contextlib.ExitStack() as stack:
            hooks = {}
            if tracking:
                from components.tracking import Tracker

                tracker = stack.enter_context(Tracker(**tracking))
                tracker.log_config(cfg, world_size=1)
                hooks["on_log"] = tracker.as_callback()
            result = run(cfg, out, resume=not args.no_resume, progress=not args.quiet, **hooks)
        from components.ray_train import last_losses

        run_dir = Path(out).resolve()
        summary = {"steps": result.steps, "resumed_from": result.resumed_from}
        print(json.dumps({"out": str(run_dir), "final": str(run_dir / "final"), **summary,
                          **last_losses(result.history)}))  # fmt: skip
    else:
        print(json.dumps(_run_on_ray(args, cfg, out, tracking)))
    from components.curves import write_curves

    write_curves(out)  # curves.csv for `dvc plots` (DVC does not read JSON lines)
    return 0


def _end_own_parent(tracking: dict, status: str) -> None:
    """Ends the parent run a standalone training created; a warning if tracking is down."""
    import sys

    from components.tracking import end_pipeline_run
    from components.tracking.client import require_reachable

    try:
        require_reachable(tracking["tracking_uri"])
        end_pipeline_run(
            tracking["pipeline_run_id"],
            status,
            experiment=tracking["experiment"],
            tracking_uri=tracking["tracking_uri"],
        )
    except Exception as e:  # the model is trained; a tracking outage must not undo that
        print(f"tracking: could not end the parent run: {str(e)[:200]}", file=sys.stderr)


def _tracking(args: argparse.Namespace, cfg) -> dict:
    """The rank-0 tracker's arguments, resolved here so that workers on other machines
    log to the same place (components.tracking.Tracker).

    Named as the pipeline's training steps are (`pretrain-nano14`, `distill-ti14`), with
    the dataset as the run's input (its name, its version as the digest, its URI). A
    standalone run is a pipeline of one step whose parent run is named after it
    (`pretrain-nano14-20260101-120000-1a2b3c`); inside a pipeline the parent is the
    pipeline's, named by $TIPSV2_PIPELINE_RUN_ID.
    """
    if args.no_track:
        return {}
    from components.datasets import dataset_input
    from components.settings import configure
    from components.tracking import resolve_tracking_uri
    from components.tracking.tags import PIPELINE_RUN_ID_ENV, UNKNOWN
    from components.tracking.tracker import new_pipeline_run_id

    configure()
    name = f"{'distill' if args.distill else 'pretrain'}-{cfg.model.variant}"
    version = cfg.run.data_version or UNKNOWN
    return {
        "pipeline_run_id": os.environ.get(PIPELINE_RUN_ID_ENV) or new_pipeline_run_id(name),
        "step": "distill" if args.distill else "train",
        "run_name": name,
        "experiment": args.experiment,
        "tracking_uri": resolve_tracking_uri(args.tracking_uri),
        "checkpoint_uri": str(Path(args.out).resolve()),
        "datasets": [dataset_input(cfg.data.path, version, "training")],
        "system_metrics": True,
    }


def _run_on_ray(args: argparse.Namespace, cfg, out: str, tracking: dict) -> dict:
    import sys

    from components.ray_train import RayTrainSpec, run_summary, tracking_warnings, train_on_ray
    from tipsv2_core.train.checkpointing import latest_checkpoint

    if args.no_resume and latest_checkpoint(Path(out)) is not None:
        raise ValueError(
            f"--no-resume: {out} already holds checkpoints, and a Ray run resumes from them "
            "after a failure; choose a new --out (or remove its checkpoints/)"
        )
    spec = RayTrainSpec(
        workers=args.workers,
        use_gpu=args.gpus_per_worker > 0,
        gpus_per_worker=args.gpus_per_worker or 1.0,
        cpus_per_worker=args.cpus_per_worker,
        address=args.ray_address,
        storage=args.storage,
        max_failures=args.max_failures,
        run_name=args.run_name,
        tracking=tracking,
    )
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    kind = "distill" if args.distill else "pretrain"
    result = train_on_ray(cfg, out, kind, spec, progress=not args.quiet, on_event=say)
    for line in tracking_warnings(result.tracking):  # the worker's log stays on the worker
        print(line, file=sys.stderr)
    return run_summary(result, args.workers)
