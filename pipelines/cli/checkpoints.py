"""`tipsv2 convert` and `tipsv2 model init|info`: move weights between formats, inspect them."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    conv = sub.add_parser(
        "convert",
        help="native checkpoint <-> official .npz pair",
        description=(
            "Convert between a native checkpoint directory and the official PyTorch .npz "
            "pair. A directory SRC is exported to DST_vision.npz and DST_text.npz (DST may "
            "be the shared prefix or either file name); an .npz SRC (either file of the pair, "
            "or their prefix) is imported into the directory DST."
        ),
    )
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--variant", default=None, help="expected variant (inferred if omitted)")
    conv.add_argument("--force", action="store_true", help="replace an existing DST")
    conv.set_defaults(handler=run_convert)

    model = sub.add_parser("model", help="create or inspect model checkpoints")
    ops = model.add_subparsers(dest="op", metavar="OP", required=True)
    init = ops.add_parser(
        "init",
        help="write a randomly initialised native checkpoint",
        description="Write a randomly initialised model: the start of a from-scratch run.",
    )
    init.add_argument("--variant", required=True)
    init.add_argument("--out", required=True, help="checkpoint directory to write")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument(
        "--pos-grid", type=int, default=None, help="position grid G (default: variant's)"
    )
    init.add_argument("--force", action="store_true", help="replace --out even if it is not empty")
    init.set_defaults(handler=run_init)

    info = ops.add_parser("info", help="print a checkpoint's variant, sizes and metadata")
    info.add_argument("checkpoint", help="native directory or official .npz (pair prefix)")
    info.set_defaults(handler=run_info)


def run_convert(args: argparse.Namespace) -> int:
    from tipsv2_core.atomic import OutputExistsError, check_replaceable
    from tipsv2_core.models.io import is_native, load_model, official_pair, save_model
    from tipsv2_core.models.official import export_official

    if is_native(args.src):
        vision, text = official_pair(args.dst)
        for file in (vision, text):
            if file.exists() and not (args.force and file.is_file()):
                what = "a directory" if file.is_dir() else "exists"
                raise OutputExistsError(
                    f"{file}: {what}; refusing to replace it"
                    + ("" if file.is_dir() else " (--force replaces it)")
                )
        export_official(load_model(args.src, args.variant), vision, text)
        print(f"wrote {vision} and {text}")
    else:
        vision, text = official_pair(args.src)
        check_replaceable(args.dst, force=args.force, what="checkpoint")
        model = load_model(args.src, args.variant)
        save_model(model, args.dst, {"source": {"vision": vision.name, "text": text.name}})
        print(f"wrote {args.dst} (variant {model.variant.name}, grid {model.vision.cfg.pos_grid})")
    return 0


def run_init(args: argparse.Namespace) -> int:
    import torch

    from tipsv2_core.atomic import check_replaceable
    from tipsv2_core.models.io import save_model
    from tipsv2_core.models.tips import TIPSModel

    check_replaceable(args.out, force=args.force, what="checkpoint")
    torch.manual_seed(args.seed)
    model = TIPSModel(args.variant, pos_grid=args.pos_grid)
    save_model(model, args.out, {"step": 0, "seed": args.seed, "source": "random-init"})
    print(f"wrote {args.out} (variant {model.variant.name}, random init, seed {args.seed})")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from tipsv2_core.checkpoint import read_meta
    from tipsv2_core.models.io import is_native, load_model

    model = load_model(args.checkpoint)
    doc = {
        "variant": model.variant.name,
        "pos_grid": model.vision.cfg.pos_grid,
        "vision_params": sum(p.numel() for p in model.vision.parameters()),
        "text_params": sum(p.numel() for p in model.text.parameters()),
        "temperature": float(model.temperature.detach().reshape(-1)[0]),
    }
    if is_native(args.checkpoint):
        doc["meta"] = read_meta(args.checkpoint)
    print(json.dumps(doc, indent=2))
    return 0
