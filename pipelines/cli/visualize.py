"""`tipsv2 segment` and `tipsv2 features`: look at what a model sees in one image."""

from __future__ import annotations

import argparse
import json

from pipelines.cli.common import add_precision, resolve_checkpoint

CHECKPOINT_HELP = (
    "native checkpoint, official npz pair prefix, or an ONNX export directory (`tipsv2 "
    "export`; segment uses its image_values graph) or one of its .onnx files, or a "
    "registered model, models:/NAME@ALIAS or models:/NAME/VERSION (its export)"
)


def register(sub: argparse._SubParsersAction) -> None:
    seg = sub.add_parser(
        "segment",
        help="zero-shot segment an image by class names; write a coloured overlay",
        description="Label every pixel with the closest of the given class names (TCL prompts, "
        "values trick, sliding window) and write the image with one colour per class.",
    )
    seg.add_argument("image")
    seg.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    seg.add_argument("--variant", default=None)
    seg.add_argument("--classes", required=True, help='comma-separated, e.g. "cat,dog,grass"')
    seg.add_argument(
        "--tokenizer", default=None, help="default: tokenizer.model beside the checkpoint"
    )
    seg.add_argument("--out", required=True, help="overlay PNG")
    seg.add_argument("--eval-size", type=int, default=448)
    seg.add_argument("--mode", default="slide", choices=("slide", "whole"))
    add_precision(seg)
    seg.set_defaults(handler=run_segment)

    feat = sub.add_parser(
        "features",
        help="PCA of patch features as an RGB image",
        description="Project the patch tokens on their first three principal components, as RGB.",
    )
    feat.add_argument("image")
    feat.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    feat.add_argument("--variant", default=None)
    feat.add_argument("--image-size", type=int, default=448)
    feat.add_argument("--out", required=True, help="PNG")
    add_precision(feat)
    feat.set_defaults(handler=run_features)


def _load(args: argparse.Namespace):
    """A TIPSModel, or its ONNX Runtime stand-in for an export (tipsv2_core.export)."""
    from tipsv2_core.export import is_onnx_export, load_onnx_model
    from tipsv2_core.models.io import load_model

    if is_onnx_export(args.checkpoint):
        return load_onnx_model(args.checkpoint, args.variant)
    return load_model(args.checkpoint, args.variant)


def _open(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{path}: cannot read image ({e})") from None


def run_segment(args: argparse.Namespace) -> int:
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    import numpy as np

    from pipelines.cli.evaluate import find_tokenizer
    from tipsv2_core.eval.visualize import overlay, segment_image
    from tipsv2_core.inference import inference_precision
    from tipsv2_core.text import Tokenizer

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    image = _open(args.image)
    model = _load(args)
    tokenizer = Tokenizer(find_tokenizer(args.checkpoint, args.tokenizer))
    with inference_precision(model, args.precision):
        labels = segment_image(
            model, tokenizer, image, classes, eval_size=args.eval_size, mode=args.mode
        )
    overlay(image, labels, len(classes)).save(args.out)
    share = np.bincount(labels.ravel(), minlength=len(classes)) / labels.size
    print(
        json.dumps(
            {
                "out": args.out,
                "pixel_share": {c: round(float(s), 4) for c, s in zip(classes, share, strict=True)},
            }
        )
    )
    return 0


def run_features(args: argparse.Namespace) -> int:
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    from tipsv2_core.eval.visualize import pca_features
    from tipsv2_core.inference import inference_precision

    model = _load(args)
    with inference_precision(model, args.precision):
        pca_features(model, _open(args.image), args.image_size).save(args.out)
    print(json.dumps({"out": args.out}))
    return 0
