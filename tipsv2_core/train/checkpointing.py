"""Training checkpoints: everything needed to continue a run exactly.

`<out>/checkpoints/step_<N>/` is a native checkpoint (tipsv2_core/checkpoint.py) whose
model.safetensors holds the student's two towers — `tipsv2 embed` loads it directly — and
whose state.safetensors holds the rest: heads, EMA teacher, loss centres, optimiser moments
and the torch RNG. The optimiser's non-tensor state and the resolved config are in
meta.json. A directory without its COMPLETE marker is ignored when resuming.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tipsv2_core.checkpoint import is_complete, load_checkpoint, save_checkpoint
from tipsv2_core.train.optim import load_optimizer_tensors, optimizer_tensors

STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}"


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step under `out/checkpoints`, if any."""
    root = out / "checkpoints"
    if not root.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := STEP_DIR.match(p.name)) and is_complete(p)
    ]
    return max(found)[1] if found else None


def save_training_checkpoint(
    out: Path,
    step: int,
    arch: nn.Module,
    opt: torch.optim.Optimizer,
    meta: dict[str, Any],
    keep: int,
) -> Path:
    student = arch.student
    state = {f"arch.{k}": v for k, v in arch.state_dict().items() if not k.startswith("student.")}
    optim_tensors, optim_rest = optimizer_tensors(opt)
    state |= optim_tensors
    state["rng.torch"] = torch.get_rng_state()
    info = {
        "kind": "tips_model",
        "variant": student.variant.name,
        "pos_grid": student.vision.cfg.pos_grid,
        "step": step,
        "optimizer": json.loads(optim_rest),
        **meta,
    }
    path = save_checkpoint(checkpoint_dir(out, step), student.state_dict(), info, state)
    _prune(out, keep)
    return path


def _prune(out: Path, keep: int) -> None:
    root = out / "checkpoints"
    done = sorted(p for p in root.iterdir() if STEP_DIR.match(p.name) and is_complete(p))
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def arch_state_dict(
    model_state: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The meta-architecture's state dict from a checkpoint's two files: the student's
    tensors (model.safetensors) and the `arch.` part of the training state (heads, EMA
    teacher, loss centres)."""
    full = {f"student.{k}": v for k, v in model_state.items()}
    full |= {k[len("arch.") :]: v for k, v in state.items() if k.startswith("arch.")}
    return full


def load_training_checkpoint(
    path: Path, arch: nn.Module, opt: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restores arch, optimiser and RNG in place; returns the checkpoint's meta."""
    model_state, meta, state = load_checkpoint(path, with_state=True)
    if state is None:
        raise ValueError(
            f"{path}: has no training state (state.safetensors); cannot resume from it"
        )
    arch.load_state_dict(arch_state_dict(model_state, state), strict=True)
    load_optimizer_tensors(opt, state, json.dumps(meta["optimizer"]))
    torch.set_rng_state(state["rng.torch"])
    return meta
