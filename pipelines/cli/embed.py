"""`tipsv2 embed image|text`: reproduce the official inference scripts; `tipsv2 embed
dataset`: batch inference over a whole dataset on Ray Data."""

from __future__ import annotations

import argparse

from pipelines.cli.common import add_precision


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="embed images or texts with a TIPS/TIPSv2 checkpoint",
        description="Embed images or texts exactly as the official inference scripts do.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    img = kinds.add_parser(
        "image",
        help="image embeddings (CLS1, CLS2, optional patch tokens)",
        description=(
            "Resize each image to SIZE×SIZE (bilinear), scale to [0,1] without mean/std "
            "normalisation, and write L2-normalised CLS1 and CLS2 (norm clipped at 1e-3); "
            "with --patch-tokens also the raw final-norm patch tokens [N, S/14, S/14, D]."
        ),
    )
    _common(img)
    img.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    img.add_argument("--image-size", type=int, default=448, help="square input size (default 448)")
    img.add_argument("--patch-tokens", action="store_true", help="also write the patch tokens")
    img.add_argument("--batch-size", type=int, default=8)
    img.set_defaults(handler=run_image)

    txt = kinds.add_parser(
        "text",
        help="text embeddings",
        description="Lowercase, tokenise to 64 tokens, encode and L2-normalise each text.",
    )
    _common(txt)
    txt.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed")
    txt.add_argument("--tokenizer", required=True, help="SentencePiece tokenizer.model")
    txt.add_argument("--batch-size", type=int, default=64)
    txt.set_defaults(handler=run_text)

    ds = kinds.add_parser(
        "dataset",
        help="embed every image of a dataset into Parquet (Ray Data), with a search index",
        description=(
            "Embed every image of a dataset (its tar shards) on Ray Data into OUT/parts/"
            "<shard>.parquet (key, shard, split, cls1, cls2[, caption]), one part per shard, "
            "then build a faiss index beside them for `tipsv2 search`. A rerun skips the "
            "shards already done; a killed run leaves no partial part."
        ),
    )
    ds.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION, an ONNX export directory or a native "
        "checkpoint directory",
    )
    ds.add_argument("--data", required=True, help="dataset directory (tipsv2 data synth/curate)")
    ds.add_argument(
        "--out",
        required=True,
        help="embeddings directory, or an s3:// prefix (made in a local staging folder, "
        "then published with its COMPLETE object last)",
    )
    ds.add_argument("--split", default=None, help="only this split (default: every sample)")
    ds.add_argument(
        "--caption",
        default=None,
        choices=("alt_text", "caption_medium", "caption_long"),
        help="also store this caption field (shown by search results)",
    )
    ds.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square input size (default: an export's checked size, else 448)",
    )
    ds.add_argument("--batch-size", type=int, default=16, help="images per model call")
    ds.add_argument(
        "--workers", type=int, default=2, help="Ray Data actors (default 2); 0 runs in-process"
    )
    ds.add_argument("--ray-address", default=None, help="an existing Ray cluster")
    ds.add_argument("--tracking-uri", default=None, help="MLflow registry (for models:/ URIs)")
    ds.add_argument("--index-kind", default="flat", choices=("flat", "hnsw"))
    ds.add_argument("--force", action="store_true", help="start over in a used --out")
    ds.add_argument("--no-progress", action="store_true", help="no progress bar")
    ds.set_defaults(handler=run_dataset)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="official tower .npz (tips_v2_oss_b14_vision.npz / _text.npz), a native "
        "checkpoint directory, or an ONNX export directory (`tipsv2 export`) or one of its "
        ".onnx files (e.g. image_encoder.int8.onnx), run with ONNX Runtime, or a registered "
        "model, models:/NAME@ALIAS or models:/NAME/VERSION (its export, downloaded once)",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="b14, l14, so400m14, g14, s14, ti14, nano14 (or B, L, So400m, g, S); "
        "inferred if omitted",
    )
    p.add_argument("--output", required=True, help="output file, .npz or .json")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_precision(p)


def _onnx(args: argparse.Namespace) -> bool:
    """True when --checkpoint is an ONNX export; those run on ONNX Runtime's CPU provider."""
    from tipsv2_core.export import is_onnx_export

    if args.checkpoint.startswith("models:/"):
        # A registered model: its export is fetched into $TIPSV2_HOME/cache (MLflow is
        # imported only on this path), then loaded like any export directory.
        from components.registry import resolve_model_uri

        args.checkpoint = str(resolve_model_uri(args.checkpoint))
    if not is_onnx_export(args.checkpoint):
        return False
    if args.device != "cpu":
        raise ValueError(f"--device {args.device}: ONNX exports run on the CPU only")
    return True


def run_image(args: argparse.Namespace) -> int:
    from tipsv2_core.export import load_onnx_vision
    from tipsv2_core.inference import embed_images, save_embeddings
    from tipsv2_core.models.io import load_vision

    if _onnx(args):
        model = load_onnx_vision(args.checkpoint, args.variant)
    else:
        model = load_vision(args.checkpoint, args.variant).to(args.device)
    arrays = embed_images(
        model, args.images, args.image_size, args.batch_size, args.patch_tokens, args.precision
    )
    out = save_embeddings(args.output, arrays, args.images)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items())
    print(f"wrote {out}: {shapes}")
    return 0


def run_text(args: argparse.Namespace) -> int:
    from tipsv2_core.export import load_onnx_text
    from tipsv2_core.inference import embed_texts, save_embeddings
    from tipsv2_core.models.io import load_text
    from tipsv2_core.text import Tokenizer

    load = load_onnx_text if _onnx(args) else load_text
    model, _ = load(args.checkpoint, args.variant)
    tokenizer = Tokenizer(args.tokenizer)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(
            f"{args.tokenizer}: {tokenizer.vocab_size} pieces, more than the model's "
            f"vocabulary of {model.cfg.vocab_size}"
        )
    emb = embed_texts(model.to(args.device), tokenizer, args.texts, args.batch_size, args.precision)
    out = save_embeddings(args.output, {"text": emb}, args.texts)
    print(f"wrote {out}: text {tuple(emb.shape)}")
    return 0


def run_dataset(args: argparse.Namespace) -> int:
    from components.embed_dataset import embed_dataset

    r = embed_dataset(
        args.model, args.data, args.out, image_size=args.image_size,
        batch_size=args.batch_size, split=args.split, caption=args.caption,
        workers=args.workers, ray_address=args.ray_address, tracking_uri=args.tracking_uri,
        index_kind=args.index_kind, force=args.force, progress=not args.no_progress,
    )  # fmt: skip
    rate = r.rows / r.seconds if r.seconds else 0.0
    print(
        f"wrote {r.uri}: {r.total_rows} images in {r.shards} parts ({r.skipped} done before, "
        f"{r.rows} embedded now on {r.executor}, {rate:.1f} img/s, {r.seconds:.1f} s) "
        "and its index"
    )
    return 0
