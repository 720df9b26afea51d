"""A full TIPSv2 training step: throughput, model-FLOPs utilisation, head-only vs full EMA.

One step = unmasked global pass (CLIP + head-only teacher), masked student pass, local
crops, text tower on both caption sets, DINO + iBOT++ + CLIP losses, backward, AdamW,
EMA update. Batches are random tensors: this measures the step, not data loading.
MFU = counted FLOPs per step / step time / fp32 matmul rate measured in the same run.

    .venv/bin/python bench/train_step.py [--variant ti14] [--reps 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import PeakRSS, interleaved_times, median, write_results
from tipsv2_core import precision
from tipsv2_core.config import apply_overrides
from tipsv2_core.recipes import get_recipe
from tipsv2_core.train.meta_arch import TIPSv2MetaArch
from tipsv2_core.train.optim import build_optimizer


def matmul_rate(n: int = 1024, reps: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Sustained GEMM FLOP/s of this machine in `dtype` (best of `reps`)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def make_batch(cfg, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    st, d = cfg.stages[0], cfg.data
    gen = torch.Generator().manual_seed(seed)
    n = (st.global_size // 14) ** 2
    masks = torch.zeros(batch, n, dtype=torch.bool)
    masks[:, : round(d.mask_ratio * n)] = True
    ids = torch.randint(1, 1000, (batch, d.text_max_len), generator=gen)
    pad = torch.zeros(batch, d.text_max_len, dtype=torch.int32)
    pad[:, d.text_max_len // 2 :] = 1  # half-length captions
    return {
        "global_crops": torch.rand(batch, 3, st.global_size, st.global_size, generator=gen),
        "local_crops": torch.rand(
            batch, d.num_local, 3, st.local_size, st.local_size, generator=gen
        ),
        "masks": masks,
        "cls1_ids": ids,
        "cls1_pad": pad,
        "cls2_ids": ids.flip(0),
        "cls2_pad": pad,
    }


def build(cfg):
    torch.manual_seed(0)
    arch = TIPSv2MetaArch(cfg)
    opt = build_optimizer(arch.trainable_modules(), cfg.optim)
    return arch, opt


def step_fn(arch, opt, batch, mode: str = "fp32"):
    """One training step on the CPU in `mode` ("fp32", or "bf16" autocast) as a callable."""

    def step():
        with precision.autocast(mode, "cpu"):
            loss, _ = arch.training_forward(batch, teacher_temp=0.04)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        arch.update_teacher(0.996)

    return step


def b14_parameter_saving() -> dict:
    """Exact counts for B/14 with the default paper-recipe heads, both EMA modes."""
    out = {}
    for mode in ("head_only", "full"):
        with torch.device("meta"):
            arch = TIPSv2MetaArch(apply_overrides(get_recipe("b14"), [f"ema.mode={mode}"]))
        out[mode] = arch.parameter_counts()
    head, full = out["head_only"], out["full"]
    saving = 1 - head["vision_and_heads_maintained"] / full["vision_and_heads_maintained"]
    print(
        f"B/14, heads K={get_recipe('b14').heads.out_dim} ({head['heads']:,} head params): "
        f"vision+heads maintained {head['vision_and_heads_maintained']:,} (head-only EMA) vs "
        f"{full['vision_and_heads_maintained']:,} (full EMA) -> {saving:.1%} fewer (paper: 42 %)"
    )
    return {"head_only": head, "full": full, "saving": saving}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="ti14")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sizes", default="112/56,224/98", help="global/local sizes to measure")
    args = p.parse_args()

    rate = matmul_rate()
    print(
        f"fp32 matmul rate (1024³ GEMM): {rate / 1e9:.1f} GFLOP/s, "
        f"{torch.get_num_threads()} threads"
    )
    rows = []
    for pair in args.sizes.split(","):
        g, loc = (int(x) for x in pair.split("/"))
        overrides = [
            f"model.variant={args.variant}",
            f"stages.0.global_size={g}",
            f"stages.0.local_size={loc}",
            "data.num_local=4",  # as measured for the README; the demo itself now uses 2
        ]
        cfg_head = apply_overrides(get_recipe("demo"), [*overrides, "ema.mode=head_only"])
        cfg_full = apply_overrides(get_recipe("demo"), [*overrides, "ema.mode=full"])
        batch = make_batch(cfg_head, args.batch)
        arch_h, opt_h = build(cfg_head)
        arch_f, opt_f = build(cfg_full)
        head, full = step_fn(arch_h, opt_h, batch), step_fn(arch_f, opt_f, batch)
        counter = FlopCounterMode(display=False)
        with counter:
            head()
        flops = counter.get_total_flops()
        with PeakRSS() as mem_h:
            head()
        with PeakRSS() as mem_f:
            full()
        times = interleaved_times({"head_only": head, "full": full}, args.reps)
        t_h, t_f = median(times["head_only"]), median(times["full"])
        row = {
            "variant": args.variant,
            "global_size": g,
            "local_size": loc,
            "batch": args.batch,
            "num_local": cfg_head.data.num_local,
            "flops_per_step": flops,
            "matmul_gflops": rate / 1e9,
            "step_s_head_only": t_h,
            "step_s_full": t_f,
            "images_per_s": args.batch / t_h,
            "mfu": flops / t_h / rate,
            "full_over_head_only_time": t_f / t_h,
            "peak_mib_head_only": mem_h.mib,
            "peak_mib_full": mem_f.mib,
            "full_over_head_only_memory": mem_f.mib / max(mem_h.mib, 1e-9),
        }
        rows.append(row)
        print(
            f"{args.variant}@{g}/{loc} b{args.batch}: {row['images_per_s']:.1f} img/s, "
            f"{flops / t_h / 1e9:.1f} GFLOP/s = {row['mfu']:.0%} of matmul rate; "
            f"full/head-only EMA: time {row['full_over_head_only_time']:.2f}x, "
            f"peak memory {mem_f.mib:.0f}/{mem_h.mib:.0f} MiB "
            f"= {row['full_over_head_only_memory']:.2f}x"
        )
    counts = b14_parameter_saving()
    print(f"wrote {write_results('train_step', rows, {'b14_parameters': counts})}")


if __name__ == "__main__":
    main()
