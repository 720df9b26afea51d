"""The checks every training entry point makes before it trains into a run directory.

`tipsv2 train` / `tipsv2 distill` (pipelines/cli/train.py), the DAG's pretrain and distil
steps (`components.steps.train.train_model`) and the Ray job of a cluster run
(`components.train_entry.run_job`) all train into a run directory that may already hold
checkpoints, and all resume from the latest one. Before any Ray work each holds the run
directory's lock (`tipsv2_core.runlock`: a second training into the same directory is
refused, naming the holder) and compares the config and data version with what the
latest checkpoint was written with (`tipsv2_core.train.resume`: a mismatch is refused,
naming the fields).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tipsv2_core.config import TrainConfig
    from tipsv2_core.train.resume import Change

__all__ = ["guarded_run"]


@contextlib.contextmanager
def guarded_run(
    out: str | os.PathLike[str],
    cfg: TrainConfig,
    kind: str,
    *,
    accept_changes: bool = False,
    resume: bool = True,
) -> Iterator[list[Change]]:
    """Holds the lock of run directory `out` for the block, after checking that `cfg`
    may resume from its latest checkpoint; yields the changes accepted (none unless
    `accept_changes`).

    kind: "pretrain" or "distill" (named in the lock's message); resume: False for a run
    that starts over whatever the directory holds (`--no-resume`): no check then.
    Raises RunLocked or ResumeMismatch (both ValueErrors: one line at the CLI, a failed
    task in the DAG) before anything is trained.
    """
    from tipsv2_core.runlock import run_lock
    from tipsv2_core.train.checkpointing import latest_checkpoint
    from tipsv2_core.train.resume import check_resume

    with run_lock(out, "distillation" if kind == "distill" else "training"):
        ckpt = latest_checkpoint(Path(out)) if resume else None
        yield [] if ckpt is None else check_resume(ckpt, cfg, accept=accept_changes)
