"""The paper's ablations (TIPSv2 Tab. 4, Tab. 2 and the mask-ratio sweep) on synthetic data.

Every row trains the `demo` recipe (nano14 at 112 px, batch 32) with one or more switches
set, on one synthetic dataset, for several seeds, then evaluates the final encoder on the
dataset's val split with the project's evaluators:

- cumulative (Tab. 4): TIPS baseline (iBOT, full EMA, alt-text + medium captions)
  → + iBOT++ → + multi-granularity captions → + head-only EMA (= TIPSv2, the `demo` recipe);
- mask-ratio sweep on TIPSv2: 0, 0.5 and 0.75 (the TIPSv2 row);
- distillation (Tab. 2): the TIPSv2 run of the same seed as a frozen, equal-size teacher,
  into a randomly initialised student and into one initialised from the teacher.

Metrics: zero-shot segmentation mIoU (`whole` mode, 9 TCL templates, values trick; the
112 px images are one window, where `slide` equals `whole`), I→T / T→I R@1 on the medium
captions with CLS2 (the token trained on synthetic captions in every row), weighted kNN
top-1 on CLS1, linear-probe mIoU on frozen patch tokens; trainable and EMA-maintained
parameters; median step time. Mean ± std over seeds.

Each run's directory holds `result.json` once it is evaluated, so an interrupted study
resumes where it stopped (training itself resumes from its last checkpoint).

    .venv/bin/python bench/ablation.py            # the full study (3 seeds)
    .venv/bin/python bench/ablation.py --quick    # minutes: 1 seed, a few steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import write_results
from tipsv2_core.config import apply_overrides
from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.eval.protocol import get_evaluator
from tipsv2_core.eval.readers import shard_eval_datasets
from tipsv2_core.models.io import load_model
from tipsv2_core.recipes import get_recipe
from tipsv2_core.text import Tokenizer
from tipsv2_core.train.runs import distill, pretrain
from tipsv2_core.train.tokenizer_setup import ensure_tokenizer

TIPSV2 = "tipsv2"  # the row every other row is compared with, and the distillation teacher


@dataclass(frozen=True)
class Row:
    name: str
    group: str  # "cumulative" | "mask" | "distill"
    overrides: tuple[str, ...] = ()
    distill: bool = False


BASELINE = ("loss.ibot_mode=ibot", "ema.mode=full", "data.caption_strategy=two_cls_medium")
ROWS = (
    Row("tips_baseline", "cumulative", BASELINE),
    Row("plus_ibotpp", "cumulative", ("ema.mode=full", "data.caption_strategy=two_cls_medium")),
    Row("plus_multigran", "cumulative", ("ema.mode=full",)),
    Row(TIPSV2, "cumulative"),  # + head-only EMA: the demo recipe as it is
    Row("mask_0", "mask", ("data.mask_ratio=0.0",)),
    Row("mask_0.5", "mask", ("data.mask_ratio=0.5",)),
    Row("distill_random_init", "distill", distill=True),
    Row("distill_teacher_init", "distill", ("distill.init_student_from_teacher=true",), True),
)
LABELS = {
    "tips_baseline": "TIPS baseline (iBOT, full EMA, alt + medium)",
    "plus_ibotpp": "+ iBOT++",
    "plus_multigran": "+ multi-granularity captions",
    TIPSV2: "+ head-only EMA (= TIPSv2), mask 0.75",
    "mask_0": "TIPSv2, mask ratio 0",
    "mask_0.5": "TIPSv2, mask ratio 0.5",
    "distill_random_init": "distilled from TIPSv2, student random init",
    "distill_teacher_init": "distilled from TIPSv2, student init from teacher",
}
METRICS = {
    "zs_miou": "zero-shot mIoU",
    "i2t_r1": "I→T R@1",
    "t2i_r1": "T→I R@1",
    "knn_top1": "kNN top-1",
    "lin_miou": "linear mIoU",
}


@dataclass
class Scale:
    num_images: int
    steps: int
    seeds: int
    eval_images: int  # val images for every metric
    train_images: int  # train-split images for kNN and the linear probe
    probe_steps: int
    extra: dict = field(default_factory=dict)


# Splits 88/10/2 %: the full study has ~250 val images, so a recall of 1/250 is 0.4 points.
FULL = Scale(
    num_images=2500, steps=300, seeds=3, eval_images=250, train_images=1000, probe_steps=300
)
QUICK = Scale(num_images=400, steps=20, seeds=1, eval_images=30, train_images=80, probe_steps=30)
SPLITS = {"train": 0.88, "val": 0.10, "test": 0.02}


def train_row(row: Row, seed: int, scale: Scale, data: Path, tok: Path, runs: Path) -> Path:
    """Trains one (row, seed) into runs/<row>/seed<k>/ and returns the run directory."""
    out = runs / row.name / f"seed{seed}"
    overrides = [
        f"run.seed={seed}",
        f"stages.0.steps={scale.steps}",
        f"run.checkpoint_every={max(scale.steps // 2, 1)}",
        *row.overrides,
    ]
    if row.distill:
        cfg = apply_overrides(get_recipe("distill_demo", distill=True), overrides)
        cfg.distill.teacher = str(runs / TIPSV2 / f"seed{seed}" / "final")
    else:
        cfg = apply_overrides(get_recipe("demo"), overrides)
    cfg.recipe = f"ablation_{row.name}"
    cfg.data.path, cfg.data.tokenizer = str(data), str(tok)
    (distill if row.distill else pretrain)(cfg, out, progress=False)
    return out


def parameter_counts(run: Path, row: Row) -> dict[str, float]:
    """Trainable and EMA-maintained parameters, rebuilt from the run's resolved config."""
    from tipsv2_core.config import from_dict
    from tipsv2_core.models.tips import TIPSModel
    from tipsv2_core.train.meta_arch import TIPSv2MetaArch

    cfg = from_dict(json.loads((run / "config.json").read_text()))
    if row.distill:
        student = TIPSModel(cfg.model.variant)
        n = sum(p.numel() for p in student.parameters())
        return {"trainable_m": n / 1e6, "ema_m": 0.0}
    counts = TIPSv2MetaArch(cfg).parameter_counts()
    return {"trainable_m": counts["trainable"] / 1e6, "ema_m": counts["ema_copies"] / 1e6}


def step_time(run: Path, batch: int) -> float:
    """Median seconds per step over the logged intervals (the first one holds start-up)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    rates = [r["train/images_per_s"] for r in rows[1:]] or [rows[0]["train/images_per_s"]]
    return batch / statistics.median(rates)


def evaluate_run(run: Path, views, train_views, scale: Scale) -> dict[str, float]:
    model = load_model(run / "final")
    tokenizer = Tokenizer(run / "tokenizer.model")
    common = {"progress": False, "image_size": 112}
    zs = get_evaluator("zeroshot_seg").run(
        model, tokenizer, views.seg, mode="whole", eval_size=112, progress=False
    )
    ret = get_evaluator("retrieval").run(model, tokenizer, views.captions, cls="cls2", **common)
    knn = get_evaluator("knn").run(
        model, None, views.classes, train=train_views.classes, k=10, **common
    )
    lin = get_evaluator("linear_seg").run(
        model, None, views.seg, train=train_views.seg, steps=scale.probe_steps, **common
    )
    return {
        "zs_miou": zs["miou"],
        "i2t_r1": ret["i2t_r@1"],
        "t2i_r1": ret["t2i_r@1"],
        "knn_top1": knn["top1"],
        "lin_miou": lin["miou"],
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results: list[dict]) -> str:
    """Markdown table: one line per row, mean ± std over the seeds that finished."""
    head = ["setting", *METRICS.values(), "trainable (M)", "EMA copy (M)", "step (s)", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROWS:
        runs = [r for r in results if r["row"] == row.name]
        if not runs:
            continue
        cells = [LABELS[row.name]]
        for key in METRICS:
            m, s = mean_std([100 * r[key] for r in runs])
            cells.append(f"{m:.1f} ± {s:.1f}")
        cells += [f"{runs[0]['trainable_m']:.2f}", f"{runs[0]['ema_m']:.2f}"]
        cells += [f"{statistics.median(r['step_s'] for r in runs):.2f}", str(len(runs))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 20 steps: a smoke run")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="training steps per run")
    ap.add_argument("--rows", default=None, help="comma-separated subset of rows")
    ap.add_argument("--out", default="runs/ablation", help="dataset and run directories")
    ap.add_argument("--name", default=None, help="results file name (default: ablation[_quick])")
    args = ap.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.seeds:
        scale.seeds = args.seeds
    if args.steps:
        scale.steps = args.steps
    rows = ROWS if not args.rows else tuple(r for r in ROWS if r.name in args.rows.split(","))
    if any(r.distill for r in rows) and TIPSV2 not in {r.name for r in rows}:
        raise SystemExit("the distillation rows need the tipsv2 row (their teacher)")

    name = args.name or ("ablation_quick" if args.quick else "ablation")
    root = Path(args.out) / ("quick" if args.quick else "full")
    t0 = time.perf_counter()
    data = write_synthetic_dataset(
        root / "data", scale.num_images, 112, seed=0, splits=SPLITS, workers=2, progress=False
    )
    cfg = get_recipe("demo")
    cfg.data.path = str(data)
    tok = ensure_tokenizer(cfg, root)  # one tokenizer for every run: the same text input
    views = shard_eval_datasets(data, "val", limit=scale.eval_images)
    train_views = shard_eval_datasets(data, "train", limit=scale.train_images)
    print(f"data ready in {time.perf_counter() - t0:.0f} s: {data}", flush=True)

    results = []
    for seed in range(scale.seeds):
        for row in rows:
            run = root / "runs" / row.name / f"seed{seed}"
            done = run / "result.json"
            if not done.is_file():
                t = time.perf_counter()
                torch.manual_seed(seed)
                train_row(row, seed, scale, data, tok, root / "runs")
                train_s = time.perf_counter() - t
                metrics = evaluate_run(run, views, train_views, scale)
                result = {
                    "row": row.name,
                    "seed": seed,
                    **metrics,
                    **parameter_counts(run, row),
                    "step_s": step_time(run, 32),
                    "train_s": train_s,
                    "eval_s": time.perf_counter() - t - train_s,
                }
                done.write_text(json.dumps(result, indent=2) + "\n")
            result = json.loads(done.read_text())
            results.append(result)
            print(
                f"[{time.perf_counter() - t0:6.0f} s] seed {seed} {row.name:<22} "
                + " ".join(f"{k}={100 * result[k]:.1f}" for k in METRICS),
                flush=True,
            )

    print()
    print(table(results))
    minutes = (time.perf_counter() - t0) / 60
    print(f"\n{len(results)} runs, {minutes:.1f} min in this call")
    extra = {"scale": scale.__dict__, "table": table(results), "minutes_this_call": minutes}
    path = write_results(name, results, extra)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
