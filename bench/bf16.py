"""bf16 on the CPU against fp32: training step, loss curve, inference, accuracy, MFU.

Five measurements, each fp32 and bf16 side by side in this one process:

1. GEMM rates: a 2048³ matmul in fp32 and in bf16 (best of 5) — the two ceilings.
2. The `demo` recipe's training step (nano14, 112/56 px, batch 32, its 2 local crops,
   all losses, backward, AdamW, EMA; random batches), fp32 and `run.precision=bf16`
   interleaved; MFU of each against *both* GEMM rates.
3. The loss curve over `--curve-steps` real training steps on synthetic data: bf16 and
   fp32 from the same seed, and fp32 from a second seed; the bf16-vs-fp32 deviation of
   the logged loss is set against the seed-to-seed deviation of fp32 (the noise floor).
4. Image-encoder inference, fp32 vs bf16 (`--precision bf16`): nano14 @ 112 batch 8,
   ti14 @ 224 batch 1, S/14 @ 448 batch 1; max |Δ| of the L2-normalised CLS embeddings.
5. Metrics: the fp32 model trained in 3, evaluated as `tipsv2 eval` does (zero-shot
   segmentation, retrieval, classification, kNN) on the synthetic val split in fp32 and
   in bf16 — the metric deltas in points.

    .venv/bin/python bench/bf16.py [--reps 5] [--curve-steps 300] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import interleaved_times, median, write_results
from bench.train_step import build, make_batch, matmul_rate, step_fn
from tests.conftest import randomize_
from tipsv2_core import precision
from tipsv2_core.config import apply_overrides
from tipsv2_core.inference import embed_pixels, inference_precision
from tipsv2_core.models.io import load_native
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.recipes import get_recipe

INFERENCE_CASES = [("nano14", 112, 8), ("ti14", 224, 1), ("s14", 448, 1)]
QUICK_CASES = [("nano14", 112, 8), ("ti14", 224, 1)]
EVAL_TASKS = ("zeroshot_seg", "retrieval", "classification", "knn")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def gemm_rates() -> dict[str, float]:
    return {p: matmul_rate(2048, 5, dtype) for p, dtype in PRECISION_DTYPES.items()}


PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# -- 2. the demo training step --------------------------------------------------------------


def training_step(reps: int, rates: dict[str, float]) -> dict:
    cfg = get_recipe("demo")
    batch = make_batch(cfg, cfg.stages[0].batch_size)

    def make(p: str):
        arch, opt = build(cfg)
        return step_fn(arch, opt, batch, p)

    steps = {p: make(p) for p in PRECISION_DTYPES}
    counter = FlopCounterMode(display=False)
    with counter:
        steps["fp32"]()
    flops = counter.get_total_flops()
    times = interleaved_times(steps, reps)
    t = {p: median(ts) for p, ts in times.items()}
    row = {
        "case": "demo step (nano14, 112/56 px, batch 32)",
        "flops_per_step": flops,
        **{f"step_s_{p}": t[p] for p in t},
        "speedup_bf16": t["fp32"] / t["bf16"],
    }
    for p in t:
        for r in rates:
            row[f"mfu_{p}_vs_{r}_gemm"] = flops / t[p] / rates[r]
    return row


# -- 3. the loss curve ----------------------------------------------------------------------


def loss_curves(data: Path, out: Path, steps: int) -> tuple[dict, dict[str, Path]]:
    from tipsv2_core.train.runs import pretrain

    def cfg(p: str, seed: int):
        return apply_overrides(
            get_recipe("demo"),
            [
                f"data.path={data}",
                f"stages.0.steps={steps}",
                "data.workers=0",  # no loader processes competing with the step for cores
                "run.probe_every=0",
                f"run.checkpoint_every={steps}",
                "run.log_every=10",
                f"run.precision={p}",
                f"run.seed={seed}",
            ],
        )

    runs = {}
    for name, p, seed in (("fp32", "fp32", 0), ("bf16", "bf16", 0), ("fp32_seed1", "fp32", 1)):
        t0 = time.perf_counter()
        res = pretrain(cfg(p, seed), out / name, progress=False)
        runs[name] = (res, time.perf_counter() - t0)
        print(f"  {name}: {steps} steps in {runs[name][1]:.0f} s", flush=True)

    def curve(name: str) -> np.ndarray:
        return np.array([r["train/loss"] for r in runs[name][0].history if "train/loss" in r])

    ref = curve("fp32")
    dev_bf16 = np.abs(curve("bf16") - ref)
    dev_seed = np.abs(curve("fp32_seed1") - ref)
    tail = max(1, len(ref) // 6)  # the last ~50 of 300 steps
    doc = {
        "steps": steps,
        "logged_points": len(ref),
        "wall_s": {k: v[1] for k, v in runs.items()},
        "bf16_vs_fp32_max": float(dev_bf16.max()),
        "bf16_vs_fp32_mean": float(dev_bf16.mean()),
        "seed_vs_seed_fp32_max": float(dev_seed.max()),
        "seed_vs_seed_fp32_mean": float(dev_seed.mean()),
        "final_loss": {k: float(curve(k)[-tail:].mean()) for k in runs},
        "curves": {k: curve(k).tolist() for k in runs},
    }
    return doc, {k: v[0].final for k, v in runs.items()}


# -- 4. inference ---------------------------------------------------------------------------


def inference(cases, reps: int) -> list[dict]:
    rows = []
    for variant, size, batch in cases:
        torch.manual_seed(0)
        model = randomize_(TIPSModel(variant, pos_grid=32), scale=0.02).vision.eval()
        images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
        fns = {
            p: (lambda p=p, m=model, x=images: embed_pixels(m, x, precision=p))
            for p in PRECISION_DTYPES
        }
        out = {p: fn() for p, fn in fns.items()}
        diff = max(np.abs(out["fp32"][k] - out["bf16"][k]).max() for k in ("cls1", "cls2"))
        times = interleaved_times(fns, reps)
        t = {p: median(ts) for p, ts in times.items()}
        rows.append(
            {
                "variant": variant,
                "image_size": size,
                "batch": batch,
                **{f"ms_{p}": 1e3 * t[p] for p in t},
                "speedup_bf16": t["fp32"] / t["bf16"],
                "max_abs_diff_normalised": float(diff),
            }
        )
        r = rows[-1]
        print(
            f"  {variant}@{size} b{batch}: fp32 {r['ms_fp32']:.1f} ms, bf16 {r['ms_bf16']:.1f} "
            f"ms -> {r['speedup_bf16']:.2f}x, max|Δ| {diff:.1e}",
            flush=True,
        )
    return rows


# -- 5. metrics -----------------------------------------------------------------------------


def metric_deltas(final: Path, data: Path, tokenizer: Path) -> dict:
    from components.evaluation import evaluate_and_report
    from tipsv2_core.eval.readers.resolve import open_eval_views, open_train_views
    from tipsv2_core.text import Tokenizer

    model = load_native(final).eval()
    tok = Tokenizer(tokenizer)
    test = open_eval_views(data, split="val")
    train = open_train_views(data, test.layout, "train", None, limit=400)
    out = {}
    for p in PRECISION_DTYPES:
        with inference_precision(model, p):
            out[p] = evaluate_and_report(
                model, tok, test, EVAL_TASKS, where=str(data), train_views=train,
                image_size=112, eval_size=112, mode="whole",
            )  # fmt: skip
    return {
        "fp32": out["fp32"],
        "bf16": out["bf16"],
        "delta_points": {k: 100 * (out["bf16"][k] - out["fp32"][k]) for k in out["fp32"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--curve-steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=1000, help="synthetic dataset size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="no S/14, 30-step curves")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = 30 if args.quick else args.curve_steps
    print(f"load average {load_average()}, {args.threads} threads, bf16 CPU: "
          f"{precision.cpu_has_bf16()}")  # fmt: skip

    rates = gemm_rates()
    print("GEMM 2048³: " + ", ".join(f"{p} {r / 1e9:.0f} GFLOP/s" for p, r in rates.items()))
    step = training_step(args.reps, rates)
    print(
        f"demo step: fp32 {step['step_s_fp32'] * 1e3:.0f} ms, bf16 "
        f"{step['step_s_bf16'] * 1e3:.0f} ms -> {step['speedup_bf16']:.2f}x; MFU fp32 "
        f"{step['mfu_fp32_vs_fp32_gemm']:.0%} (of fp32 GEMM) / "
        f"{step['mfu_fp32_vs_bf16_gemm']:.0%} (of bf16), bf16 "
        f"{step['mfu_bf16_vs_fp32_gemm']:.0%} / {step['mfu_bf16_vs_bf16_gemm']:.0%}",
        flush=True,
    )
    print("inference (image encoder):")
    infer = inference(QUICK_CASES if args.quick else INFERENCE_CASES, args.reps)

    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synth"
        write_synthetic_dataset(str(data), args.images, image_size=112, seed=0, progress=False)
        print(f"loss curves ({steps} steps each):", flush=True)
        curves, finals = loss_curves(data, Path(tmp) / "runs", steps)
        print(
            f"  |loss bf16 − fp32|: max {curves['bf16_vs_fp32_max']:.3f}, mean "
            f"{curves['bf16_vs_fp32_mean']:.3f}; fp32 seed 1 − seed 0 (noise): max "
            f"{curves['seed_vs_seed_fp32_max']:.3f}, mean {curves['seed_vs_seed_fp32_mean']:.3f}"
            f"; final (mean of last points) {curves['final_loss']}",
            flush=True,
        )
        tokenizer = finals["fp32"].parent / "tokenizer.model"
        metrics = metric_deltas(finals["fp32"], data, tokenizer)
    for k, d in metrics["delta_points"].items():
        print(f"  {k}: fp32 {100 * metrics['fp32'][k]:.2f}, bf16 {100 * metrics['bf16'][k]:.2f}"
              f" ({d:+.2f} points)")  # fmt: skip
    print(f"load average {load_average()}")
    extra = {
        "gemm_gflops": {p: r / 1e9 for p, r in rates.items()},
        "training_step": step,
        "loss_curves": curves,
        "metrics": metrics,
        "threads": args.threads,
        "load_average_end": load_average(),
    }
    path = write_results("bf16_quick" if args.quick else "bf16", infer, extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
