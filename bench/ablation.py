"""The paper's ablations (TIPSv2 Tab. 4, Tab. 2 and the mask-ratio sweep) on synthetic data.

Every row trains the `demo` recipe as it ships (nano14 at 112 px, batch 32, 1,100 bf16
steps, 2 local crops, a decay over the last 20 %; the students: `distill_demo`, 200 steps,
the text tower from the teacher's) with one or more switches set, on one synthetic
dataset of the default (`dense`) world, for several seeds, then evaluates the final
encoder on the dataset's val split with the project's evaluators:

- cumulative (Tab. 4): TIPS baseline (iBOT, full EMA, alt-text + medium captions)
  → + iBOT++ → + multi-granularity captions (the `demo` recipe) → + head-only EMA (= TIPSv2);
- distillation (Tab. 2): the TIPSv2 run of the same seed as a frozen, equal-size teacher,
  into a student whose vision tower starts at random (its text tower from the teacher's, as
  `distill_demo` ships; with --rows, one initialised wholly from the teacher);
- the mask-ratio sweep on TIPSv2 (0 and 0.5 beside the TIPSv2 row's 0.75), with --rows;
- controls, per seed: the random-init encoder (no training, the same tokenizer) and the
  colour-only oracle (labels from pixel colour alone, fitted on the training split). The
  supervised upper bound of each row is its linear probe on frozen patch tokens.

Each row is compared with the row it changes (the previous cumulative row; full EMA for
head-only EMA; the teacher for the students): the mean of the per-seed differences, their
standard deviation, and whether the difference exceeds twice that deviation.

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
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import PeakRSS, write_results
from tipsv2_core.config import apply_overrides
from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.eval import colour_oracle
from tipsv2_core.eval.controls import random_init_model
from tipsv2_core.eval.protocol import get_evaluator
from tipsv2_core.eval.readers import shard_eval_datasets
from tipsv2_core.models.io import load_model
from tipsv2_core.recipes import get_recipe
from tipsv2_core.text import Tokenizer
from tipsv2_core.train.runs import distill, pretrain
from tipsv2_core.train.tokenizer_setup import ensure_tokenizer

TIPSV2 = "tipsv2"  # the paper's full recipe, and the distillation teacher
# Each row names its EMA: the demo keeps a full EMA copy of the encoder (README, "Learning
# dense alignment", item 18), so TIPSv2's head-only EMA is a switch here like the others.
HEAD_ONLY = "ema.mode=head_only"


@dataclass(frozen=True)
class Row:
    name: str
    group: str  # "cumulative" | "mask" | "distill"
    overrides: tuple[str, ...] = ()
    distill: bool = False


BASELINE = ("loss.ibot_mode=ibot", "ema.mode=full", "data.caption_strategy=two_cls_medium")
ROWS = (
    Row("random_init", "control"),  # no training: the floor every row must clear
    Row("colour_oracle", "control"),  # labels from pixel colour alone
    Row("tips_baseline", "cumulative", BASELINE),
    Row("plus_ibotpp", "cumulative", ("ema.mode=full", "data.caption_strategy=two_cls_medium")),
    Row("plus_multigran", "cumulative", ("ema.mode=full",)),  # the demo recipe as it ships
    Row(TIPSV2, "cumulative", (HEAD_ONLY,)),  # + head-only EMA
    Row("mask_0", "mask", (HEAD_ONLY, "data.mask_ratio=0.0")),
    Row("mask_0.5", "mask", (HEAD_ONLY, "data.mask_ratio=0.5")),
    Row("distill_random_init", "distill", distill=True),
    Row("distill_teacher_init", "distill", ("distill.init_student_from_teacher=true",), True),
)
# What the full study runs by default (within 90 minutes on 2 cores); --rows picks others.
DEFAULT_ROWS = ("random_init", "colour_oracle", "tips_baseline", "plus_ibotpp",
                "plus_multigran", TIPSV2, "distill_random_init")  # fmt: skip
# The row each row is compared with: what it changes.
REFERENCE = {
    "tips_baseline": "random_init",
    "plus_ibotpp": "tips_baseline",
    "plus_multigran": "plus_ibotpp",
    TIPSV2: "plus_multigran",
    "mask_0": TIPSV2,
    "mask_0.5": TIPSV2,
    "distill_random_init": TIPSV2,
    "distill_teacher_init": TIPSV2,
}
LABELS = {
    "random_init": "control: random-init encoder (no training)",
    "colour_oracle": "control: colour-only oracle",
    "tips_baseline": "TIPS baseline (iBOT, full EMA, alt + medium)",
    "plus_ibotpp": "+ iBOT++",
    "plus_multigran": "+ multi-granularity captions",
    TIPSV2: "+ head-only EMA (= TIPSv2), mask 0.75",
    "mask_0": "TIPSv2, mask ratio 0",
    "mask_0.5": "TIPSv2, mask ratio 0.5",
    "distill_random_init": "distilled from TIPSv2, student vision tower random init",
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
    steps: int | None  # None: the recipe's own
    seeds: int
    eval_images: int  # val images for every metric
    train_images: int  # train-split images for kNN and the linear probe
    probe_steps: int
    extra: dict = field(default_factory=dict)


# Splits 88/10/2 %: the full study has ~400 val images and scores 300 of them, so a
# recall of 1/300 is 0.3 points.
FULL = Scale(
    num_images=4000, steps=None, seeds=3, eval_images=300, train_images=1000, probe_steps=300
)
QUICK = Scale(num_images=400, steps=20, seeds=1, eval_images=30, train_images=80, probe_steps=30)
SPLITS = {"train": 0.88, "val": 0.10, "test": 0.02}


def train_row(row: Row, seed: int, scale: Scale, data: Path, tok: Path, runs: Path) -> Path:
    """Trains one (row, seed) into runs/<row>/seed<k>/ and returns the run directory."""
    out = runs / row.name / f"seed{seed}"
    recipe = get_recipe("distill_demo", distill=True) if row.distill else get_recipe("demo")
    steps = scale.steps or recipe.total_steps
    overrides = [f"run.seed={seed}", f"run.checkpoint_every={max(steps // 2, 1)}"]
    if scale.steps:  # otherwise the recipe's own schedule, untouched
        overrides.append(f"stages.0.steps={steps}")
    cfg = apply_overrides(recipe, [*overrides, *row.overrides])
    if row.distill:
        cfg.distill.teacher = str(runs / TIPSV2 / f"seed{seed}" / "final")
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
    # Learning-curve rows (`probe/*`) interleave with the training rows and carry no rate.
    rates = [r["train/images_per_s"] for r in rows if "train/images_per_s" in r]
    rates = rates[1:] or rates
    return batch / statistics.median(rates)


def evaluate_run(model, tokenizer, views, train_views, scale: Scale) -> dict[str, float]:
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


def _cell(values: list[float | None]) -> str:
    got = [100 * v for v in values if v is not None]
    if not got:
        return "-"
    m, s = mean_std(got)
    return f"{m:.1f} ± {s:.1f}"


def table(results: list[dict]) -> str:
    """Markdown table: one line per row, mean ± std over the seeds that finished."""
    head = ["setting", *METRICS.values(), "trainable (M)", "EMA copy (M)", "peak RSS (MiB)",
            "step (s)", "seeds"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROWS:
        runs = [r for r in results if r["row"] == row.name]
        if not runs:
            continue
        cells = [LABELS[row.name], *(_cell([r.get(k) for r in runs]) for k in METRICS)]
        for key, fmt in (("trainable_m", "{:.2f}"), ("ema_m", "{:.2f}"), ("peak_mib", "{:.0f}")):
            cells.append(fmt.format(runs[0][key]) if runs[0].get(key) is not None else "-")
        step = [r["step_s"] for r in runs if r.get("step_s")]
        cells += [f"{statistics.median(step):.2f}" if step else "-", str(len(runs))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def significance(results: list[dict], key: str = "zs_miou") -> list[str]:
    """One line per compared row: the mean ± std of its per-seed difference in `key` from
    its reference row (points), and whether |mean| exceeds twice the std."""
    by = {(r["row"], r["seed"]): r.get(key) for r in results}
    lines = []
    for row in ROWS:
        ref = REFERENCE.get(row.name)
        seeds = sorted(s for (n, s) in by if n == row.name and (ref, s) in by)
        diffs = [100 * (by[row.name, s] - by[ref, s]) for s in seeds if by[row.name, s] is not None]
        if ref is None or not diffs:
            continue
        m, sd = mean_std(diffs)
        verdict = "n/a (one seed)" if len(diffs) < 2 else ("yes" if abs(m) > 2 * sd else "no")
        lines.append(
            f"- {LABELS[row.name]} vs {LABELS[ref]}: {METRICS[key]} {m:+.1f} ± {sd:.1f} points "
            f"over {len(diffs)} seeds; beyond 2σ: {verdict}"
        )
    return lines


def run_row(row: Row, seed: int, scale: Scale, data: Path, tok: Path, root: Path, views,
            train_views) -> dict:  # fmt: skip
    """Trains (or, for a control, builds) and evaluates one (row, seed)."""
    tokenizer = Tokenizer(tok)
    if row.name == "colour_oracle":
        return {"zs_miou": colour_oracle.evaluate(train_views.seg, views.seg)["miou"]}
    if row.name == "random_init":
        model = random_init_model(get_recipe("demo").model.variant, seed)
        counts = {"trainable_m": sum(p.numel() for p in model.parameters()) / 1e6, "ema_m": 0.0}
        return {**evaluate_run(model, tokenizer, views, train_views, scale), **counts}
    run = root / "runs" / row.name / f"seed{seed}"
    t = time.perf_counter()
    torch.manual_seed(seed)
    with PeakRSS() as mem:
        train_row(row, seed, scale, data, tok, root / "runs")
    train_s = time.perf_counter() - t
    model = load_model(run / "final")
    return {
        **evaluate_run(model, tokenizer, views, train_views, scale),
        **parameter_counts(run, row),
        "peak_mib": mem.mib,
        "step_s": step_time(run, 32),
        "train_s": train_s,
        "eval_s": time.perf_counter() - t - train_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, 20 steps: a smoke run")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="training steps per run")
    ap.add_argument("--rows", default=None, help=f"comma-separated rows (default: {DEFAULT_ROWS})")
    ap.add_argument("--out", default="runs/ablation", help="dataset and run directories")
    ap.add_argument("--name", default=None, help="results file name (default: ablation[_quick])")
    args = ap.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.seeds:
        scale.seeds = args.seeds
    if args.steps:
        scale.steps = args.steps
    wanted = args.rows.split(",") if args.rows else DEFAULT_ROWS
    unknown = sorted(set(wanted) - {r.name for r in ROWS})
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {[r.name for r in ROWS]}")
    rows = tuple(r for r in ROWS if r.name in wanted)
    if any(r.distill for r in rows) and TIPSV2 not in {r.name for r in rows}:
        raise SystemExit("the distillation rows need the tipsv2 row (their teacher)")

    name = args.name or ("ablation_quick" if args.quick else "ablation")
    root = Path(args.out) / ("quick" if args.quick else "full")
    t0 = time.perf_counter()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
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
            done = root / "runs" / row.name / f"seed{seed}" / "result.json"
            if not done.is_file():
                result = {"row": row.name, "seed": seed}
                result |= run_row(row, seed, scale, data, tok, root, views, train_views)
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(result, indent=2) + "\n")
            result = json.loads(done.read_text())
            results.append(result)
            print(
                f"[{time.perf_counter() - t0:6.0f} s] seed {seed} {row.name:<22} "
                + " ".join(f"{k}={100 * result[k]:.1f}" for k in METRICS if k in result),
                flush=True,
            )

    print()
    print(table(results))
    lines = significance(results)
    print("\nzero-shot mIoU, each row against the row it changes:\n" + "\n".join(lines))
    minutes = (time.perf_counter() - t0) / 60
    load = os.getloadavg()
    print(f"\n{len(results)} runs, {minutes:.1f} min in this call")
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    extra = {
        "scale": scale.__dict__,
        "recipe_steps": scale.steps or get_recipe("demo").total_steps,
        "table": table(results),
        "significance": lines,
        "minutes_this_call": minutes,
        "load_average_after": load,
    }
    path = write_results(name, results, extra)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
