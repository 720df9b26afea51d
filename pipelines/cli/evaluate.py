"""`tipsv2 eval`: the paper's evaluation protocols on a shard dataset, metrics as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPORT_SAMPLES = 6
TASKS = ("zeroshot_seg", "retrieval", "classification", "knn", "linear_seg")
TRAIN_TASKS = {"knn", "linear_seg"}  # these fit on a training split
# tipsv2_core.eval.readers.resolve.LAYOUTS, spelled out so `tipsv2 --help` imports nothing
LAYOUTS = ("shards", "voc", "ade20k", "generic", "coco", "imagefolder")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: zero-shot seg, retrieval, classification, kNN, linear probe",
        description=(
            "Evaluate a checkpoint and print namespaced metrics (eval/<task>/<dataset>/<metric>) "
            "as JSON. Datasets: our shards (synthetic or curated), Pascal VOC, ADE20K, a "
            "generic images/ + masks/ + classes.txt folder (segmentation), a COCO caption JSON "
            "(retrieval) or an image folder per class (classification, kNN); the layout is "
            "recognised from the files, or given with --layout."
        ),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="native checkpoint, official npz pair prefix, or ONNX export (dir or .onnx file)",
    )
    p.add_argument("--variant", default=None)
    p.add_argument("--dataset", required=True, help="dataset directory (or COCO caption .json)")
    p.add_argument(
        "--layout", default="auto", choices=("auto", *LAYOUTS), help="dataset layout (default auto)"
    )
    p.add_argument(
        "--image-root", default=None, help="COCO: image folder (default: beside the JSON)"
    )
    p.add_argument(
        "--train-dataset",
        default=None,
        help="training data for knn/linear_seg when the layout has no training split",
    )
    p.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated, from {','.join(TASKS)}"
    )
    p.add_argument(
        "--split", default=None, help="evaluation split (default: val; ADE20K: validation)"
    )
    p.add_argument(
        "--train-split",
        default=None,
        help="training split for knn and linear_seg (default: train; ADE20K: training)",
    )
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


def load_eval_model(checkpoint: str, variant: str | None):
    """A native checkpoint, an official npz pair, or an ONNX export (directory, or one
    `.onnx` file such as image_encoder.int8.onnx for that precision) run on ONNX Runtime."""
    from tipsv2_core.export import is_onnx_export, load_onnx_model
    from tipsv2_core.models.io import load_model

    if is_onnx_export(checkpoint):
        return load_onnx_model(checkpoint, variant)
    return load_model(checkpoint, variant)


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
    from tipsv2_core.eval.readers.resolve import open_eval_views, open_train_views
    from tipsv2_core.text import Tokenizer

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    # Read the data first: a malformed dataset fails before the model is loaded.
    kw = {
        "field": args.caption_field,
        "background": args.background,
        "limit": args.limit,
        "image_root": args.image_root,
    }
    test = open_eval_views(args.dataset, args.layout, args.split, **kw)
    datasets = {t: test.view_for(t, args.dataset) for t in tasks}
    train = None
    if TRAIN_TASKS & set(tasks):
        train = open_train_views(
            args.dataset, test.layout, args.train_split, args.train_dataset, **kw
        )
        for t in TRAIN_TASKS & set(tasks):
            train.view_for(t, args.train_dataset or args.dataset)
    model = load_eval_model(args.checkpoint, args.variant)
    needs_text = {"zeroshot_seg", "retrieval", "classification"} & set(tasks)
    tokenizer = Tokenizer(find_tokenizer(args.checkpoint, args.tokenizer)) if needs_text else None
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
        opts: dict[str, object] = {"image_size": args.image_size}
        if task == "zeroshot_seg":
            opts = {"mode": args.mode, "eval_size": args.eval_size, "on_prediction": on_prediction}
        if task in TRAIN_TASKS:
            opts["train"] = train.view_for(task, args.train_dataset or args.dataset)
        metrics |= run_evaluation(task, model, tokenizer, datasets[task], **opts, **common)
    if args.report:
        write_eval_report(args, model, test, metrics, kept)
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


def write_eval_report(args, model, views, metrics: dict, kept: dict) -> None:
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
        "dataset": f"{args.dataset} ({views.layout}, split {args.split or 'default'})",
        "config": meta.get("config"),
    }
    seg, rows = views.seg, []
    colours = palette(len(seg.class_names)) if seg is not None else None
    samples = {s.key: s for s in seg.samples} if seg is not None else {}
    for key, pred in kept.items():
        image = samples[key].load_image()
        truth = colour_labels(samples[key].load_label(), colours)
        rows.append((key, image, truth, colour_labels(pred.astype("int64"), colours)))
    first = next(v for v in (views.seg, views.captions, views.classes) if v is not None)
    pca = [(s.key, pca_features(model, s.load_image(), args.image_size)) for s in first.samples[:3]]
    data = ReportData(
        title=f"Evaluation of {ckpt.name} on {first.name}",
        metrics=metrics,
        lineage=lineage,
        predictions=rows,
        pca=pca,
        history=_run_history(ckpt),
    )
    write_report(data, args.report)
