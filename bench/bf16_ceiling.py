"""How far bf16 can take the `demo` training step on this CPU, and what autocast costs.

The goal for the demo step is 1.6x its fp32 speed in bf16; `run.precision=bf16`
(autocast over fp32 weights) reaches 1.18-1.35x. This script says where the rest goes,
in one process:

1. Amdahl's bound. A profile of the fp32 step (torch.profiler, self CPU time) splits it
   into the GEMM-class ops bf16 can speed up (mm, addmm, bmm, convolutions, the SDPA
   kernels, their backward) and everything else (norms, element-wise work, softmax, the
   losses, the optimiser). With the GEMM-class share g sped up by the measured 2048^3
   GEMM ratio r and the rest unchanged, the step can go at most 1 / (1 - g + g / r)
   faster. (Small matmuls gain less than r, so the true bound is lower still. r moves
   with the host: on a CPU with AMX it varied from 2.8 to 7.5 between runs.)
2. What autocast's casts cost. The step three ways, interleaved: fp32; bf16 autocast over
   fp32 weights (what training runs); and the whole model cast to bf16 with no autocast,
   so nothing is cast per op. The third is a timing only, not a training mode: its
   optimiser updates bf16 weights directly, which loses small updates (a trainer would
   keep fp32 master weights and copy the gradients over, about one cast per parameter
   tensor a step). Its gap to autocast bounds what such a trainer could gain.

    .venv/bin/python bench/bf16_ceiling.py [--reps 7] [--threads N]

About 20 s on 2 quiet cores; JSON in bench/results/bf16_ceiling.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import interleaved_times, median, write_results
from bench.bf16 import gemm_rates, load_average
from bench.train_step import build, make_batch, step_fn
from tipsv2_core.recipes import get_recipe
from tipsv2_core.train.optim import build_optimizer

# Ops whose work is matrix products: what bf16's faster GEMM units can speed up.
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "convolution",
            "scaled_dot_product")  # fmt: skip


def gemm_share(step, reps: int = 3) -> tuple[float, dict[str, float]]:
    """The GEMM-class share of the step's self CPU time, and the time of its top ops."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in GEMM_OPS))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return gemm / total, {e.key: e.self_cpu_time_total / total for e in top}


def _to_bf16(batch):
    if isinstance(batch, torch.Tensor):
        return batch.to(torch.bfloat16) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: _to_bf16(v) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_bf16(v) for v in batch)
    return batch


def bf16_weights_step(cfg, batch):
    """The step with the model itself in bf16 and no autocast (a timing, see above)."""
    arch, _ = build(cfg)
    arch = arch.to(torch.bfloat16)
    opt = build_optimizer(arch.trainable_modules(), cfg.optim)
    batch = _to_bf16(batch)

    def step():
        loss, _ = arch.training_forward(batch, teacher_temp=0.04)
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        arch.update_teacher(0.996)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {load_average()}, {args.threads} threads")

    rates = gemm_rates()
    r = rates["bf16"] / rates["fp32"]
    print(f"GEMM 2048³: fp32 {rates['fp32'] / 1e9:.0f}, bf16 {rates['bf16'] / 1e9:.0f} "
          f"GFLOP/s ({r:.2f}x)")  # fmt: skip

    cfg = get_recipe("demo")
    batch = make_batch(cfg, cfg.stages[0].batch_size)
    steps = {
        "fp32": step_fn(*build(cfg), batch, "fp32"),
        "bf16 autocast": step_fn(*build(cfg), batch, "bf16"),
        "bf16 weights, no autocast": bf16_weights_step(cfg, batch),
    }

    g, top = gemm_share(steps["fp32"])
    bound = 1 / (1 - g + g / r)
    print(f"fp32 step: GEMM-class ops {g:.0%} of self CPU time -> Amdahl bound {bound:.2f}x "
          f"at the {r:.2f}x GEMM ratio")  # fmt: skip
    for key, share in top.items():
        print(f"  {key[:60]:<60} {share:6.1%}")

    times = interleaved_times(steps, args.reps)
    t = {name: median(ts) for name, ts in times.items()}
    for name, s in t.items():
        print(f"{name:<28} {s * 1e3:7.1f} ms  {t['fp32'] / s:5.2f}x fp32")
    print(f"load average {load_average()}")
    path = write_results(
        "bf16_ceiling",
        [{"case": name, "step_s": s, "speedup_vs_fp32": t["fp32"] / s} for name, s in t.items()],
        {
            "gemm_gflops": {p: v / 1e9 for p, v in rates.items()},
            "gemm_ratio": r,
            "fp32_gemm_class_share": g,
            "amdahl_bound": bound,
            "fp32_top_ops_share": top,
            "threads": args.threads,
            "reps": args.reps,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
