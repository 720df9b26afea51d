"""`tipsv2 train` and `tipsv2 distill`: the TIPSv2 recipe on one process."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="pretrain a TIPSv2 model (CLIP + DINO + iBOT++, head-only EMA)",
        description=(
            "Pretrain with a named recipe. Resumes from the latest complete checkpoint in "
            "--out unless --no-resume. Overrides: --set key=value (e.g. stages.0.steps=50, "
            "loss.ibot_mode=ibot, ema.mode=full, data.caption_strategy=one_cls_multi)."
        ),
    )
    _common(train, default_recipe="demo")
    train.set_defaults(handler=run_train, distill=False)

    dist = sub.add_parser(
        "distill",
        help="distil a frozen teacher into a randomly initialised student",
        description=(
            "Distil a teacher (native checkpoint or official npz pair) into a new student "
            "of --student-variant: patch loss on all tokens of an unmasked view, CLS "
            "distillation, and L_CLIP for the student's text tower."
        ),
    )
    _common(dist, default_recipe="distill_demo")
    dist.add_argument("--teacher", help="teacher checkpoint (native dir or official npz prefix)")
    dist.add_argument("--teacher-variant", default=None)
    dist.add_argument(
        "--student-variant", default=None, help="student size (default: the recipe's)"
    )
    dist.set_defaults(handler=run_train, distill=True)


def _common(p: argparse.ArgumentParser, default_recipe: str) -> None:
    p.add_argument(
        "--recipe", default=default_recipe, help=f"recipe name (default {default_recipe})"
    )
    p.add_argument("--data", help="dataset directory (shards + manifest.parquet)")
    p.add_argument("--out", help="run directory: checkpoints, metrics.jsonl, final/")
    p.add_argument(
        "--tokenizer", default=None, help="SentencePiece model (default: train one on the data)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if --out has checkpoints"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print sizes, FLOPs and memory; train nothing"
    )
    p.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace):
    from tipsv2_core.config import apply_overrides, validate
    from tipsv2_core.recipes import get_recipe

    cfg = get_recipe(args.recipe, distill=args.distill)
    if args.data:
        cfg.data.path = args.data.removeprefix("file://")
    if args.tokenizer:
        cfg.data.tokenizer = args.tokenizer
    if args.distill:
        if args.teacher:
            cfg.distill.teacher = args.teacher.removeprefix("file://")
        if args.teacher_variant:
            cfg.distill.teacher_variant = args.teacher_variant
        if args.student_variant:
            cfg.model.variant = args.student_variant
    apply_overrides(cfg, args.set)
    return validate(cfg)


def run_train(args: argparse.Namespace) -> int:
    if args.list_recipes:
        from tipsv2_core.recipes import DISTILL_RECIPES, RECIPES

        for name, make in (DISTILL_RECIPES if args.distill else RECIPES).items():
            cfg = make()
            stages = ", ".join(
                f"{s.name} {s.steps}×{s.batch_size}@{s.global_size}px" for s in cfg.stages
            )
            print(f"{name:<24} {cfg.model.variant:<9} {stages}")
        return 0
    cfg = build_config(args)
    if args.dry_run:
        from tipsv2_core.train.dry_run import dry_run

        if args.distill:
            raise ValueError("--dry-run covers pretraining recipes; run it with `tipsv2 train`")
        print(json.dumps(dry_run(cfg), indent=2))
        return 0
    if not cfg.data.path or not args.out:
        raise ValueError("--data and --out are required (or use --dry-run)")
    if args.distill and not cfg.distill.teacher:
        raise ValueError("--teacher is required for distillation")
    from tipsv2_core.train.runs import distill, pretrain

    run = distill if args.distill else pretrain
    result = run(
        cfg, args.out.removeprefix("file://"), resume=not args.no_resume, progress=not args.quiet
    )
    last = result.history[-1] if result.history else {}
    losses = {k.removeprefix("train/"): round(v, 4) for k, v in last.items() if k.endswith("loss")}
    print(json.dumps({"out": str(result.out), "final": str(result.final), "steps": result.steps,
                      "resumed_from": result.resumed_from, **losses}))  # fmt: skip
    return 0
