"""`tipsv2 eval`: the paper's evaluation protocols on a shard dataset, metrics as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPORT_SAMPLES = 6
TASKS = ("zeroshot_seg", "retrieval", "classification", "knn", "linear_seg")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: zero-shot seg, retrieval, classification, kNN, linear probe",
        description=(
            "Evaluate a checkpoint on a shard dataset (e.g. from `tipsv2 data synth`) and print "
            "namespaced metrics (eval/<task>/<dataset>/<metric>) as JSON."
        ),
    )
    p.add_argument(
        "--checkpoint", required=True, help="native checkpoint or official npz pair prefix"
    )
    p.add_argument("--variant", default=None)
    p.add_argument("--dataset", required=True, help="shard dataset directory")
    p.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated, from {','.join(TASKS)}"
    )
    p.add_argument("--split", default="val", help="evaluation split (default val)")
    p.add_argument("--train-split", default="train", help="training split for knn and linear_seg")
    p.add_argument(
        "--tokenizer", default=None, help="default: tokenizer.model beside the checkpoint"
    )
    p.add_argument("--caption-field", default="caption_medium", help="caption field for retrieval")
    p.add_argument("--background", action="store_true", help="keep label 0 as a 'background' class")
    p.add_argument(
        "--eval-size", type=int, default=448, help="short side for zero-shot segmentation"
    )
    p.add_argument("--image-size", type=int, default=224, help="input size for the other tasks")
    p.add_argument("--mode", default="slide", choices=("slide", "whole"))
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    p.add_argument(
        "--save-predictions", default=None, metavar="DIR", help="label PNG + overlay per image"
    )
    p.add_argument("--output", default=None, help="also write the metrics JSON here")
    p.add_argument(
        "--report", default=None, metavar="HTML", help="write a self-contained HTML report"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=run_eval)


def find_tokenizer(checkpoint: str, given: str | None) -> Path:
    if given:
        return Path(given)
    ckpt = Path(checkpoint)
    for cand in (
        ckpt / "tokenizer.model",
        ckpt.parent / "tokenizer.model",
        ckpt.parent.parent / "tokenizer.model",
    ):
        if cand.is_file():
            return cand
    raise ValueError(f"no tokenizer.model beside {checkpoint}; pass --tokenizer")


def run_eval(args: argparse.Namespace) -> int:
    from tipsv2_core.eval.predictions import PredictionWriter
    from tipsv2_core.eval.protocol import run_evaluation
    from tipsv2_core.eval.readers import shard_eval_datasets
    from tipsv2_core.models.io import load_model
    from tipsv2_core.text import Tokenizer

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    model = load_model(args.checkpoint, args.variant)
    tokenizer = Tokenizer(find_tokenizer(args.checkpoint, args.tokenizer))
    kw = {"field": args.caption_field, "background": args.background, "limit": args.limit}
    test = shard_eval_datasets(args.dataset, args.split, **kw)
    train = (
        shard_eval_datasets(args.dataset, args.train_split, **kw)
        if {"knn", "linear_seg"} & set(tasks)
        else None
    )
    common = {"device": args.device, "progress": not args.quiet}
    metrics: dict[str, float] = {}
    writer = PredictionWriter(args.save_predictions, test.seg) if args.save_predictions else None
    kept: dict[str, object] = {}  # the first few predictions, for the report

    def on_prediction(key: str, pred) -> None:
        if writer is not None:
            writer(key, pred)
        if len(kept) < REPORT_SAMPLES:
            kept[key] = pred

    for task in tasks:
        if task == "zeroshot_seg":
            opts = {"mode": args.mode, "eval_size": args.eval_size, "on_prediction": on_prediction}
            metrics |= run_evaluation(task, model, tokenizer, test.seg, **opts, **common)
        elif task == "retrieval":
            metrics |= run_evaluation(
                task, model, tokenizer, test.captions, image_size=args.image_size, **common
            )
        elif task == "classification":
            metrics |= run_evaluation(
                task, model, tokenizer, test.classes, image_size=args.image_size, **common
            )
        elif task == "knn":
            metrics |= run_evaluation(
                task,
                model,
                tokenizer,
                test.classes,
                train=train.classes,
                image_size=args.image_size,
                **common,
            )
        else:  # linear_seg
            metrics |= run_evaluation(
                task,
                model,
                tokenizer,
                test.seg,
                train=train.seg,
                image_size=args.image_size,
                **common,
            )
    if args.report:
        write_eval_report(args, model, test.seg, metrics, kept)
    doc = json.dumps(metrics, indent=2, sort_keys=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(doc + "\n")
    print(doc)
    return 0


def _run_history(checkpoint: Path) -> list[dict]:
    """metrics.jsonl of the run a checkpoint came from (run/final or run/checkpoints/step_N)."""
    for run in (checkpoint.parent, checkpoint.parent.parent):
        path = run / "metrics.jsonl"
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


def write_eval_report(args, model, seg, metrics: dict, kept: dict) -> None:
    from tipsv2_core.checkpoint import read_meta
    from tipsv2_core.eval.predictions import palette
    from tipsv2_core.eval.report import ReportData, colour_labels, write_report
    from tipsv2_core.eval.visualize import pca_features
    from tipsv2_core.models.io import is_native

    ckpt = Path(args.checkpoint)
    meta = read_meta(ckpt) if is_native(ckpt) else {}
    lineage = {
        "checkpoint": str(ckpt),
        "variant": model.variant.name,
        "step": meta.get("step"),
        "data_version": meta.get("data_version"),
        "git_sha": meta.get("git_sha"),
        "dataset": f"{args.dataset} ({args.split})",
        "config": meta.get("config"),
    }
    colours = palette(len(seg.class_names))
    samples = {s.key: s for s in seg.samples}
    rows = []
    for key, pred in kept.items():
        image = samples[key].load_image()
        truth = colour_labels(samples[key].load_label(), colours)
        rows.append((key, image, truth, colour_labels(pred.astype("int64"), colours)))
    pca = [(s.key, pca_features(model, s.load_image(), args.image_size)) for s in seg.samples[:3]]
    data = ReportData(
        title=f"Evaluation of {ckpt.name} on {seg.name}",
        metrics=metrics,
        lineage=lineage,
        predictions=rows,
        pca=pca,
        history=_run_history(ckpt),
    )
    write_report(data, args.report)
