"""`tipsv2 export`: a checkpoint -> ONNX graphs checked against PyTorch, with a JSON summary."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (image encoder, values, text encoder) with parity check",
        description=(
            "Export the image encoder (cls1, cls2, patch_tokens), its values-trick twin for "
            "zero-shot segmentation (values) and the text encoder (embedding) to ONNX "
            "(opset 18; dynamic batch, height and width multiples of 14, text length). Each "
            "graph is run under ONNX Runtime against PyTorch on random and real-looking "
            "inputs (batch 1 and 8, every --image-size); a max abs difference above "
            "--tolerance fails the export and leaves nothing at --out. Optional fp16 and int8 "
            "copies are measured and reported. The export directory works as --checkpoint "
            "for `tipsv2 embed` and `tipsv2 segment`."
        ),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="native checkpoint directory, official npz pair, or a registered model "
        "(models:/NAME@ALIAS, models:/NAME/VERSION: the checkpoint it was exported from)",
    )
    p.add_argument("--variant", default=None, help="expected variant (inferred if omitted)")
    p.add_argument(
        "--out",
        required=True,
        help="export directory to write; must be empty or missing unless --force",
    )
    p.add_argument("--force", action="store_true", help="replace --out even if it is not empty")
    p.add_argument("--fp16", action="store_true", help="also write float16 graphs (*.fp16.onnx)")
    p.add_argument(
        "--int8", action="store_true", help="also write int8 dynamically quantised graphs"
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=None,
        metavar="SIZE",
        help="square sizes the parity check runs at (default 224 448); the graphs accept "
        "any multiple of 14",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="SentencePiece tokenizer.model to ship in the export and to tokenise caption "
        "inputs for the parity check (default: tokenizer.model beside the checkpoint, if any)",
    )
    p.add_argument(
        "--no-values",
        action="store_true",
        help="skip the image_values graph (then the export cannot run `tipsv2 segment`)",
    )
    p.add_argument("--tolerance", type=float, default=None, help="fp32 max abs diff (1e-4)")
    p.add_argument(
        "--eval-dataset",
        default=None,
        help="also measure each precision's metric change on this dataset (accuracy.json)",
    )
    p.add_argument("--eval-limit", type=int, default=50, help="images of --eval-dataset used")
    p.add_argument("--eval-size", type=int, default=224, help="image size for --eval-dataset")
    p.set_defaults(handler=run_export)


def _tokenizer(checkpoint: str, given: str | None) -> str | None:
    from pipelines.cli.evaluate import find_tokenizer

    if given:
        return given
    try:
        return str(find_tokenizer(checkpoint, None))
    except ValueError:
        return None  # an export without a tokenizer is still complete


def run_export(args: argparse.Namespace) -> int:
    from pipelines.cli.common import resolve_checkpoint
    from tipsv2_core.atomic import check_replaceable

    # A registered version holds its ONNX export; exporting again needs the weights.
    args.checkpoint = resolve_checkpoint(args.checkpoint, native=True)
    from tipsv2_core.export import (
        DEFAULT_IMAGE_SIZES,
        GRAPH_NAMES,
        IMAGE_VALUES,
        TOLERANCE,
        ParityError,
        export_checkpoint,
    )

    check_replaceable(args.out, force=args.force, what="export")
    graphs = [g for g in GRAPH_NAMES if not (args.no_values and g == IMAGE_VALUES)]
    try:
        result = export_checkpoint(
            args.checkpoint,
            args.out,
            variant=args.variant,
            image_sizes=args.image_size or DEFAULT_IMAGE_SIZES,
            graphs=graphs,
            fp16=args.fp16,
            int8=args.int8,
            tokenizer=_tokenizer(args.checkpoint, args.tokenizer),
            tolerance=TOLERANCE if args.tolerance is None else args.tolerance,
        )
    except ParityError as e:
        print(f"tipsv2 export: {e}", file=sys.stderr)
        return 1
    summary = result.summary()
    if args.eval_dataset:
        from components.export import accuracy_deltas

        summary["accuracy"] = accuracy_deltas(
            args.checkpoint,
            result.path,
            args.eval_dataset,
            limit=args.eval_limit,
            image_size=args.eval_size,
            eval_size=args.eval_size,
        )
    print(json.dumps(summary, indent=2))
    return 0
