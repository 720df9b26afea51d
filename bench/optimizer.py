"""AdamW through torch's fused kernel against its default per-tensor loop, in the demo step.

On CPU torch's AdamW defaults to a Python loop over the parameter tensors (its `foreach`
path is the default on CUDA only); `optim.fused` (default on) selects the fused kernel
(tipsv2_core/train/optim.py). Measured, interleaved in this one process: the `demo`
recipe's full training step (nano14, 112/56 px, batch 32, its 2 local crops, every
loss, backward, optimiser, EMA; random batches as in bench/train_step.py) in bf16
autocast and in fp32, and the optimiser's `step()` alone on the same gradients.

    .venv/bin/python bench/optimizer.py [--reps 9]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import interleaved_times, median, write_results
from bench.train_step import build, make_batch, step_fn
from tipsv2_core.config import apply_overrides
from tipsv2_core.recipes import get_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=9)
    args = p.parse_args()
    load_start = os.getloadavg()[0]
    print(f"load average at start: {load_start:.2f}, {torch.get_num_threads()} threads")

    cfgs = {
        name: apply_overrides(get_recipe("demo"), [f"optim.fused={name == 'fused'}".lower()])
        for name in ("fused", "loop")
    }
    batch = make_batch(cfgs["fused"], 32)
    built = {name: build(cfg) for name, cfg in cfgs.items()}  # same seed, same weights
    n_tensors = len([q for g in built["fused"][1].param_groups for q in g["params"]])

    rows = []
    for mode in ("bf16", "fp32"):
        fns = {name: step_fn(arch, opt, batch, mode) for name, (arch, opt) in built.items()}
        t = interleaved_times(fns, args.reps)
        fused, loop = median(t["fused"]), median(t["loop"])
        rows.append(
            {
                "case": f"demo step ({mode})",
                "fused_s": fused,
                "loop_s": loop,
                "speedup": loop / fused,
            }
        )
        print(
            f"demo step, {mode}: loop {loop * 1e3:.1f} ms, fused {fused * 1e3:.1f} ms, "
            f"{loop / fused:.2f}x"
        )

    # The optimiser alone: one backward leaves gradients, then step() repeatedly on them.
    for arch, _ in built.values():
        loss, _ = arch.training_forward(batch, teacher_temp=0.04)
        loss.backward()
    t = interleaved_times({name: opt.step for name, (_, opt) in built.items()}, args.reps)
    fused, loop = median(t["fused"]), median(t["loop"])
    rows.append(
        {"case": "optimizer.step()", "fused_s": fused, "loop_s": loop, "speedup": loop / fused}
    )
    print(
        f"optimizer.step() over {n_tensors} tensors: loop {loop * 1e3:.1f} ms, "
        f"fused {fused * 1e3:.1f} ms, {loop / fused:.2f}x"
    )
    extra = {
        "parameter_tensors": n_tensors,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
    }
    print(f"wrote {write_results('optimizer', rows, extra)}")


if __name__ == "__main__":
    main()
