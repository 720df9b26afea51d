"""`python -m components.train_entry`: one training run from a resolved config file.

The entry point of the Ray jobs that pipeline steps submit to an existing cluster
(`components.ray_jobs`). The step resolves and validates the `TrainConfig` where it runs
and ships it as JSON (`tipsv2_core.config.to_dict`); this process, started by Ray on the
cluster, rebuilds it, runs it on Ray Train in the cluster it belongs to, and writes what
it did as a JSON result file for the step to read (never parsed from the job's log):

    python -m components.train_entry --config cfg.json --kind pretrain --out RUN \\
        --result result.json [--workers N] [--gpus-per-worker G] [--no-track]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.ray_train import Kind, RayTrainSpec, run_summary, train_on_ray


@dataclass(frozen=True)
class JobOptions:
    """How the job trains, besides its config: the flags of this entry point."""

    workers: int = 1
    gpus_per_worker: float = 0.0  # 0: CPU workers
    experiment: str = "tipsv2"  # MLflow experiment
    track: bool = True  # log to MLflow (the tracking URI is the cluster's)

    def argv(self) -> list[str]:
        """These options as this entry point's command-line flags."""
        args = ["--workers", str(self.workers), "--experiment", self.experiment]
        if self.gpus_per_worker > 0:
            args += ["--gpus-per-worker", str(self.gpus_per_worker)]
        return args if self.track else [*args, "--no-track"]


def run_job(
    config: dict[str, Any],
    kind: Kind,
    out: str,
    options: JobOptions | None = None,
    address: str = "auto",
) -> dict[str, Any]:
    """Trains `config` (a `to_dict` tree) into `out` on the Ray cluster at `address`;
    returns `components.ray_train.run_summary` of the run."""
    from components.versioning import data_version
    from tipsv2_core.config import from_dict, validate

    opts = options or JobOptions()
    cfg = validate(from_dict(config))
    if cfg.data.path and not cfg.run.data_version:
        # The staged copy has the dataset's manifest: its content hash is the version.
        cfg.run.data_version = data_version(cfg.data.path, missing_ok=True)
    tracking: dict[str, Any] = {}
    if opts.track:
        from components.settings import configure

        # Resolved here, in the cluster, whose settings (the tipsv2-env ConfigMap) name
        # the tracking server its workers can reach.
        tracking = {
            "step": "distill" if kind == "distill" else "train",
            "experiment": opts.experiment,
            "tracking_uri": configure().tracking_uri,
            "checkpoint_uri": str(Path(out).resolve()),
        }
    spec = RayTrainSpec(
        workers=opts.workers,
        use_gpu=opts.gpus_per_worker > 0,
        gpus_per_worker=opts.gpus_per_worker or 1.0,
        address=address,
        tracking=tracking,
    )
    from components.run_guard import guarded_run

    with guarded_run(out, cfg, kind):  # the lock and resume checks of every entry point
        return run_summary(train_on_ray(cfg, out, kind, spec), opts.workers)


def parser() -> argparse.ArgumentParser:
    """The entry point's flags (`JobOptions.argv` writes the optional ones)."""
    p = argparse.ArgumentParser(
        prog="python -m components.train_entry", description=__doc__.split("\n")[0]
    )
    p.add_argument("--config", required=True, help="the resolved TrainConfig as JSON")
    p.add_argument("--kind", choices=("pretrain", "distill"), default="pretrain")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--result", required=True, help="where to write the run's summary (JSON)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--experiment", default="tipsv2")
    p.add_argument("--no-track", action="store_true")
    p.add_argument("--address", default="auto", help="the Ray cluster (default: this one)")
    return p


def options_of(args: argparse.Namespace) -> JobOptions:
    """The JobOptions that parsed flags describe."""
    return JobOptions(args.workers, args.gpus_per_worker, args.experiment, not args.no_track)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = options_of(args)
    config = json.loads(Path(args.config).read_text())
    summary = run_job(config, args.kind, args.out, options, args.address)
    result = Path(args.result)
    partial = result.with_name(result.name + ".partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    partial.replace(result)  # whole or absent: the step never reads half a result
    return 0


if __name__ == "__main__":
    sys.exit(main())
