"""Why the ablation's dense metrics sit at chance: what the encoders did learn, and when.

Runs after `bench/ablation.py` on some of its rows (default: the TIPS baseline and
TIPSv2, every seed) and measures, on frozen
CLS1 features with weighted kNN (k = 10), two attributes of each image's largest object:

- its **colour** (12 values, named in every caption, independent of the class), and
- its **shape class** (26 values: the labels of every dense metric),

for a randomly initialised encoder, the checkpoint at half the training and the final
one; plus retrieval R@1 at the same points. If colour rises well above chance while the
shape class does not, the encoders learnt what the captions make easy within this
budget, and the class-level metrics cannot separate the recipes yet: a matter of
training length and data difficulty, not of the recipe or the evaluators.

    .venv/bin/python bench/ablation_probe.py [--out runs/ablation/full]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import write_results
from tipsv2_core.data.shards import iter_samples
from tipsv2_core.eval.datasets import ClassDataset, ClassSample
from tipsv2_core.eval.protocol import get_evaluator
from tipsv2_core.eval.readers import shard_eval_datasets
from tipsv2_core.models.io import load_model
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.text import Tokenizer

ATTRIBUTES = ("colour", "class")


def attribute_views(data: Path, split: str, limit: int) -> dict[str, ClassDataset]:
    """Per attribute, a ClassDataset labelled with the largest object's value."""
    rows = []
    for sample in iter_samples(data, split):
        if len(rows) >= limit:
            break
        objects = sample.meta.get("objects") or []
        if objects:
            rows.append((sample.key, sample.image, max(objects, key=lambda o: o["pixels"])))
    views = {}
    for attr in ATTRIBUTES:
        names = sorted({o[attr] for _, _, o in rows})
        samples = [
            ClassSample(key, (lambda im=img: im), names.index(o[attr])) for key, img, o in rows
        ]
        views[attr] = ClassDataset(f"{attr}-{split}", names, samples)
    return views


def probe(model, tokenizer, test, train, captions) -> dict[str, float]:
    knn = get_evaluator("knn")
    out = {}
    for attr in ATTRIBUTES:
        res = knn.run(model, None, test[attr], train=train[attr], k=10, image_size=112,
                      progress=False)  # fmt: skip
        out[f"knn_{attr}"] = res["top1"]
    ret = get_evaluator("retrieval").run(
        model, tokenizer, captions, cls="cls2", image_size=112, progress=False
    )
    out["i2t_r1"], out["t2i_r1"] = ret["i2t_r@1"], ret["t2i_r@1"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="runs/ablation/full", help="bench/ablation.py's folder")
    ap.add_argument("--rows", default="tips_baseline,tipsv2", help="ablation rows to probe")
    args = ap.parse_args(argv)
    root = Path(args.out)
    data = root / "data"
    test, train = attribute_views(data, "val", 250), attribute_views(data, "train", 1000)
    captions = shard_eval_datasets(data, "val", limit=250).captions
    chance = {  # the share of the most frequent value: what always guessing it scores
        f"knn_{a}": max(Counter(s.label for s in test[a].samples).values()) / len(test[a])
        for a in ATTRIBUTES
    }
    rows = []
    names = args.rows.split(",")
    runs = [r for name in names for r in sorted((root / "runs" / name).glob("seed*"))]
    for run in runs:
        tokenizer = Tokenizer(run / "tokenizer.model")
        ckpts = sorted((run / "checkpoints").glob("step_*"))
        points = [("random init", None), *[(c.name, c) for c in ckpts]]
        for label, path in points:
            if path is None:
                torch.manual_seed(int(run.name.removeprefix("seed")))
                model = TIPSModel("nano14")
            else:
                model = load_model(path)
            scores = probe(model, tokenizer, test, train, captions)
            name = "random init" if path is None else f"{run.parent.name} {label}"
            row = {"row": run.parent.name, "seed": run.name, "point": name, **scores}
            rows.append(row)
            print(row, flush=True)

    print("\n| encoder | kNN colour (12) | kNN shape class (26) | I→T R@1 | T→I R@1 |")
    print("|---|---|---|---|---|")
    for point in dict.fromkeys(r["point"] for r in rows):
        sel = [r for r in rows if r["point"] == point]

        def cell(key: str, sel=sel) -> str:
            vals = [100 * r[key] for r in sel]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.fmean(vals):.1f} ± {sd:.1f}"

        print(f"| {point} | {cell('knn_colour')} | {cell('knn_class')} | {cell('i2t_r1')} | "
              f"{cell('t2i_r1')} |")  # fmt: skip
    print(
        f"\nmajority-class share: colour {100 * chance['knn_colour']:.1f} %, "
        f"shape {100 * chance['knn_class']:.1f} %; retrieval chance {100 / len(captions):.1f} %"
    )
    write_results("ablation_probe", rows, {"majority": chance, "seeds": len(runs)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
