"""The training loop shared by pretraining and distillation, on one process or many.

Per step: schedules (LR, weight decay, EMA momentum, teacher temperature) from the step
number; `accum_steps` micro-batches; a finiteness check per loss term; gradient clipping;
the optimiser step; the EMA update; metrics; checkpoints every `checkpoint_every` steps
and at the end. A run resumes from its latest complete checkpoint by default.

Data parallel when a `torch.distributed` process group is up (Ray Train sets one): a
stage's `batch_size` is the global batch, each rank reads its own part of every batch
(`ResumableBatchSampler` shards by rank), the contrastive loss sees every rank's
negatives, and gradients are averaged over ranks before clipping, so W ranks with b
samples each take the step one process takes with W·b. Rank 0 alone writes the run
directory (checkpoints, metrics, final model); the other ranks wait for it.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from tipsv2_core import distributed as dist
from tipsv2_core import precision
from tipsv2_core.config import TrainConfig, to_dict, validate
from tipsv2_core.data.train_dataset import ResumableBatchSampler, TrainDataset, collate
from tipsv2_core.data.views import ViewConfig
from tipsv2_core.errors import TrainingDiverged
from tipsv2_core.models.io import save_model
from tipsv2_core.train.checkpointing import (
    latest_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from tipsv2_core.train.optim import build_optimizer, set_hyperparams
from tipsv2_core.train.probe import Probe
from tipsv2_core.train.schedules import cosine, linear_warmup, warmup_stable_decay
from tipsv2_core.train.tokenizer_setup import ensure_tokenizer


@dataclass
class TrainResult:
    out: Path
    final: Path  # model-only checkpoint of the student, loadable by `tipsv2 embed`
    steps: int
    resumed_from: int  # 0 for a fresh run
    history: list[dict[str, float]]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _check_precision(cfg: TrainConfig, device: torch.device) -> None:
    bf16 = precision.resolve(cfg.run.precision, device) == "bf16"
    if bf16 and device.type == "cpu" and not precision.cpu_has_bf16():
        warnings.warn(
            "run.precision=bf16 on a CPU without AVX512-BF16/AMX: bf16 is emulated and "
            "slower than fp32 (set run.precision=fp32)",
            stacklevel=3,
        )


def make_loader(
    cfg: TrainConfig,
    stage_idx: int,
    start_batch: int,
    tokenizer: Path,
    mask_ratio: float,
    rank: int = 0,
    world: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    stage = cfg.stages[stage_idx]
    d = cfg.data
    views = ViewConfig(
        global_size=stage.global_size,
        local_size=stage.local_size,
        num_local=d.num_local,
        global_scale=d.global_scale,
        local_scale=d.local_scale,
        flip_p=d.flip_p,
    )
    ds = TrainDataset(
        d.path,
        d.split,
        views,
        mask_ratio,
        d.mask_mode,
        d.caption_strategy,
        tokenizer,
        d.text_max_len,
        cfg.run.seed,
    )
    micro = stage.batch_size // (cfg.optim.accum_steps * world)  # this rank's part
    sampler = ResumableBatchSampler(
        len(ds), micro, cfg.run.seed, stage_idx, start_batch, rank, world
    )
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=d.workers,
        prefetch_factor=4 if d.workers else None,
        persistent_workers=False,
    )
    return iter(loader)


def sync_gradients(module: nn.Module) -> None:
    """Averages every parameter's gradient over ranks (a no-op on one process).

    One flat all-reduce rather than one per tensor: on CPU/gloo the per-call latency,
    not the bytes, dominates for small models.
    """
    if not dist.is_distributed():
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= dist.world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (same seed, but never rely on it)."""
    if not dist.is_distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        torch.distributed.broadcast(t.data, src=0)


def _barrier() -> None:
    if dist.is_distributed():
        torch.distributed.barrier()


def _move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def run_training(
    cfg: TrainConfig,
    out: str | Path,
    build_arch: Callable[[TrainConfig], nn.Module],
    *,
    mask_ratio: float,
    resume: bool = True,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
    stop_after: int | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[Path | None, int], None] | None = None,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Trains `build_arch(cfg)` (TIPSv2MetaArch or DistillMetaArch) into `out`.

    `stop_after` ends the run early after that many steps *of this call* (used to test
    interruption); checkpoints are still written on schedule. On rank 0, `on_log(row)`
    receives every metrics row as it is written to metrics.jsonl (a tracker), and every
    rank calls `on_checkpoint(path, step)` once a checkpoint is complete (path on rank 0,
    None elsewhere: Ray Train's report must be called by all ranks). `device`
    overrides `cfg.run.device` (Ray Train hands each worker its own).
    """
    validate(cfg)
    rank, world = dist.rank(), dist.world_size()
    micro_check = [s.batch_size % (cfg.optim.accum_steps * world) for s in cfg.stages]
    if any(micro_check):
        raise ValueError(
            f"every stage's batch_size must divide by accum_steps × workers "
            f"({cfg.optim.accum_steps} × {world}); got {[s.batch_size for s in cfg.stages]}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else resolve_device(cfg.run.device)
    _check_precision(cfg, device)
    torch.manual_seed(cfg.run.seed)
    if rank == 0:  # one writer for the run's tokenizer; the others then find it
        tokenizer = ensure_tokenizer(cfg, out)
    _barrier()
    if rank != 0:
        tokenizer = ensure_tokenizer(cfg, out)
    arch = build_arch(cfg).to(device)
    broadcast_parameters(arch)
    opt = build_optimizer(arch.trainable_modules(), cfg.optim)
    meta = {
        "config": to_dict(cfg),
        "data_version": cfg.run.data_version,
        "tokenizer": tokenizer.name,
        **(extra_meta or {}),
    }
    if rank == 0:
        (out / "config.json").write_text(json.dumps(meta["config"], indent=2) + "\n")
    probe = Probe.for_run(cfg, tokenizer) if rank == 0 else None

    start = 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        start = int(load_training_checkpoint(ckpt, arch, opt)["step"])
    total = cfg.total_steps
    history: list[dict[str, float]] = []
    metrics_file = out / "metrics.jsonl"
    if metrics_file.exists() and rank == 0:
        # A fresh run starts a fresh log; a resumed one drops the rows logged after its
        # checkpoint (they are about to be computed again), so every step appears once.
        kept = [
            line
            for line in metrics_file.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= start
        ]
        metrics_file.write_text("".join(f"{line}\n" for line in kept))

    bar = tqdm(
        total=total,
        initial=start,
        disable=not progress or rank != 0,
        desc=cfg.recipe,
        unit="step",
        dynamic_ncols=True,
    )
    stage_idx, it = -1, None
    end = total if stop_after is None else min(total, start + stop_after)
    warmup = int(cfg.optim.warmup_frac * total)
    decay = round(cfg.optim.decay_frac * total)
    t_warm = int(cfg.loss.teacher_temp_warmup_frac * total)
    arch.train()
    t_last, seen = time.perf_counter(), 0
    for step in range(start, end):
        idx, _ = cfg.stage_at(step)
        if idx != stage_idx:  # a new resolution stage (or the first): rebuild the loader
            stage_start = sum(s.steps for s in cfg.stages[:idx])
            it = make_loader(
                cfg,
                idx,
                (step - stage_start) * cfg.optim.accum_steps,
                tokenizer,
                mask_ratio,
                rank,
                world,
            )
            stage_idx = idx
        lr = warmup_stable_decay(cfg.optim.lr, cfg.optim.min_lr, warmup, decay, step, total)
        wd = cosine(cfg.optim.weight_decay, cfg.optim.weight_decay_end, step, total)
        set_hyperparams(opt, lr, wd)
        teacher_temp = linear_warmup(
            cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp, step, t_warm
        )
        momentum = cosine(cfg.ema.momentum_start, cfg.ema.momentum_end, step, total)
        ssl_scale = linear_warmup(0.0, 1.0, step, int(cfg.loss.ssl_warmup_frac * total))

        terms: dict[str, float] = {}
        for _ in range(cfg.optim.accum_steps):
            batch = _move(next(it), device)
            with precision.autocast(cfg.run.precision, device):
                loss, parts = arch.training_forward(batch, teacher_temp, ssl_scale)
            (loss / cfg.optim.accum_steps).backward()
            for name, v in parts.items():
                terms[name] = terms.get(name, 0.0) + float(v) / cfg.optim.accum_steps
            terms["loss"] = terms.get("loss", 0.0) + float(loss.detach()) / cfg.optim.accum_steps
            seen += batch["global_crops"].shape[0] * world
        if world > 1:  # every rank logs, checks and stops on the same (mean) numbers
            names = sorted(terms)
            vec = dist.all_reduce_mean(torch.tensor([terms[n] for n in names], dtype=torch.float64))
            terms = dict(zip(names, vec.tolist(), strict=True))
        bad = [name for name, v in terms.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(
                f"{bad[0]} is {terms[bad[0]]} at step {step + 1}; training stopped (no "
                "checkpoint of this state written; a lower learning rate or a larger "
                "temperature may help)"
            )
        sync_gradients(arch.trainable_modules())
        if cfg.optim.clip_grad > 0:
            terms["grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(
                    arch.trainable_modules().parameters(), cfg.optim.clip_grad
                )
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        arch.update_teacher(momentum)
        arch.after_step()
        done = step + 1

        if done % cfg.run.log_every == 0 or done == end:
            now = time.perf_counter()
            row = {
                "step": done,
                **{f"train/{k}": v for k, v in terms.items()},
                "train/lr": lr,
                "train/weight_decay": wd,
                "train/ema_momentum": momentum,
                "train/teacher_temp": teacher_temp,
                "train/ssl_scale": ssl_scale,
                "train/temperature": float(arch.student.temperature.detach().reshape(-1)[0]),
                "train/images_per_s": seen / max(now - t_last, 1e-9),
            }
            t_last, seen = now, 0
            history.append(row)
            if rank == 0:
                with open(metrics_file, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if on_log is not None:
                    on_log(row)
            bar.set_postfix(
                {
                    k: f"{terms[k]:.3f}"
                    for k in ("loss", "clip_loss", "dino_loss", "ibot_loss", "patch_loss")
                    if k in terms
                }
                | {"lr": f"{lr:.1e}", "img/s": f"{row['train/images_per_s']:.0f}"}
            )
        if probe is not None and done % cfg.run.probe_every == 0:
            row = {"step": done, **probe(arch.student)}
            history.append(row)
            with open(metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            if on_log is not None:
                on_log(row)
        bar.update(1)
        if done % cfg.run.checkpoint_every == 0 or done == total:
            path = None
            if rank == 0:
                path = save_training_checkpoint(
                    out, done, arch, opt, meta, cfg.run.keep_checkpoints
                )
            _barrier()
            if on_checkpoint is not None:  # on every rank: Ray's report is collective
                on_checkpoint(path, done)
    bar.close()
    done = max(end, start)
    final = out / "final"
    if done == total and rank == 0:
        save_model(arch.student, final, {"step": done, **meta})
    _barrier()
    return TrainResult(out=out, final=final, steps=done, resumed_from=start, history=history)
