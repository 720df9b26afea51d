"""`--dry-run`: build a recipe on the meta device and report its size and cost.

Nothing is allocated: parameters and activations are meta tensors. FLOPs come from
torch's FlopCounterMode over one full training step (forward and backward) of one
micro-batch per stage; activation memory is the total size of the tensors autograd
saves for the backward pass.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from tipsv2_core.config import TrainConfig, validate
from tipsv2_core.train.meta_arch import TIPSv2MetaArch, uses_cls2

BYTES = 4  # fp32 master weights, gradients and optimiser moments


def _meta_batch(
    cfg: TrainConfig, batch: int, global_size: int, local_size: int
) -> dict[str, torch.Tensor]:
    n = (global_size // 14) ** 2
    t = cfg.data.text_max_len
    out = {
        "global_crops": torch.empty(batch, 3, global_size, global_size, device="meta"),
        "local_crops": torch.empty(
            batch, cfg.data.num_local, 3, local_size, local_size, device="meta"
        ),
        "masks": torch.empty(batch, n, dtype=torch.bool, device="meta"),
        "cls1_ids": torch.empty(batch, t, dtype=torch.long, device="meta"),
        "cls1_pad": torch.empty(batch, t, dtype=torch.int32, device="meta"),
    }
    if uses_cls2(cfg):
        out["cls2_ids"], out["cls2_pad"] = out["cls1_ids"], out["cls1_pad"]
    return out


def _optimizer_bytes(params: list[torch.nn.Parameter], name: str) -> int:
    if name == "adamw":  # two moments per parameter
        return sum(2 * p.numel() for p in params) * BYTES
    # Adafactor keeps factored second moments: rows + columns for matrices.
    return sum((p.shape[-2] + p.shape[-1]) if p.ndim >= 2 else p.numel() for p in params) * BYTES


def dry_run(cfg: TrainConfig) -> dict:
    """Parameter counts, FLOPs per step and a memory estimate for every stage."""
    validate(cfg)
    with torch.device("meta"):
        arch = TIPSv2MetaArch(cfg)
    counts = arch.parameter_counts()
    trainable = [p for p in arch.trainable_modules().parameters() if p.requires_grad]
    static = (
        sum(p.numel() for p in arch.parameters()) * BYTES  # weights and EMA copies
        + sum(p.numel() for p in trainable) * BYTES  # gradients
        + _optimizer_bytes(trainable, cfg.optim.name)
    )
    stages = []
    for stage in cfg.stages:
        micro = stage.batch_size // cfg.optim.accum_steps
        batch = _meta_batch(cfg, micro, stage.global_size, stage.local_size)
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        flops = FlopCounterMode(display=False)
        with flops, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = arch.training_forward(batch, teacher_temp=0.04)
            loss.backward()
        arch.zero_grad(set_to_none=True)
        step_flops = flops.get_total_flops() * cfg.optim.accum_steps
        stages.append(
            {
                "stage": stage.name,
                "steps": stage.steps,
                "batch_size": stage.batch_size,
                "micro_batch": micro,
                "global_size": stage.global_size,
                "local_size": stage.local_size,
                "flops_per_step": step_flops,
                "flops_per_image": step_flops / stage.batch_size,
                # For the whole micro-batch on one device; with W data-parallel workers
                # each holds 1/W of it.
                "activation_bytes_per_micro_batch": saved,
                "activation_bytes_per_image": saved / micro,
                "memory_estimate_bytes": static + saved,
            }
        )
    return {
        "recipe": cfg.recipe,
        "variant": cfg.model.variant,
        "ema_mode": cfg.ema.mode,
        "parameters": counts,
        "static_memory_bytes": static,
        "stages": stages,
        "total_flops": sum(s["flops_per_step"] * s["steps"] for s in stages),
    }
