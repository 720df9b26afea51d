"""`tipsv2 eval`: the paper's evaluation protocols on a shard dataset, metrics as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli.common import add_precision

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
        help="native checkpoint, official npz pair prefix, ONNX export (dir or .onnx file), "
        "or a registered model, models:/NAME@ALIAS or models:/NAME/VERSION",
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
    p.add_argument(
        "--output",
        default=None,
        help="also write the metrics JSON here, with the dataset's version as "
        "`eval_data_version` (what `tipsv2 models register` and the promotion gate compare)",
    )
    p.add_argument(
        "--report", default=None, metavar="HTML", help="write a self-contained HTML report"
    )
    p.add_argument("--device", default=None)
    add_precision(p)
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
    from pipelines.cli.common import resolve_checkpoint

    args.checkpoint = resolve_checkpoint(args.checkpoint)
    from components.evaluation import checkpoint_lineage, evaluate_and_report, run_history
    from tipsv2_core.eval.predictions import PredictionWriter
    from tipsv2_core.eval.readers.resolve import open_eval_views, open_train_views
    from tipsv2_core.inference import inference_precision
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
    for t in tasks:
        test.view_for(t, args.dataset)
    train = None
    if TRAIN_TASKS & set(tasks):
        train = open_train_views(
            args.dataset, test.layout, args.train_split, args.train_dataset, **kw
        )
        for t in TRAIN_TASKS & set(tasks):
            train.view_for(t, args.train_dataset or args.dataset)
    model = load_eval_model(args.checkpoint, args.variant)
    if args.device is not None:
        model.to(args.device)  # the precision's autocast follows the model's device
    needs_text = {"zeroshot_seg", "retrieval", "classification"} & set(tasks)
    tokenizer = Tokenizer(find_tokenizer(args.checkpoint, args.tokenizer)) if needs_text else None
    writer = PredictionWriter(args.save_predictions, test.seg) if args.save_predictions else None
    lineage: dict = {}
    if args.report:  # what the report says about the model (reads its meta.json)
        lineage = checkpoint_lineage(args.checkpoint, model.variant.name)
        lineage["dataset"] = f"{args.dataset} ({test.layout}, split {args.split or 'default'})"
        lineage["config"] = lineage.pop("config")  # the long entry last
    with inference_precision(model, args.precision):
        metrics = evaluate_and_report(
            model,
            tokenizer,
            test,
            tasks,
            where=args.dataset,
            train_views=train,
            train_where=args.train_dataset or args.dataset,
            image_size=args.image_size,
            eval_size=args.eval_size,
            mode=args.mode,
            device=args.device,
            progress=not args.quiet,
            on_prediction=writer,
            report=args.report,
            subject=f"Evaluation of {Path(args.checkpoint).name}",
            lineage=lineage,
            history=run_history(args.checkpoint) if args.report else (),
        )
    doc = json.dumps(metrics, indent=2, sort_keys=True)
    if args.output:
        write_output(args.output, metrics, args.dataset)
    print(doc)
    return 0


def write_output(path: str, metrics: dict[str, float], dataset: str) -> None:
    """The metrics file: {name: value} plus `eval_data_version`, the version of the data
    they were measured on (its DVC md5, else its manifest's hash; absent for layouts
    without a manifest), so two models evaluated on the same data can be compared."""
    from components.tracking.tags import TAG_EVAL_DATA_VERSION
    from components.versioning import data_version

    doc: dict[str, object] = dict(metrics)
    version = data_version(dataset, missing_ok=True) if Path(dataset).is_dir() else ""
    if version:
        doc[TAG_EVAL_DATA_VERSION] = version
    from tipsv2_core.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
