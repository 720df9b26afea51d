"""The `tipsv2` command line.

Each command group lives in its own module with a `register(subparsers)` function; heavy
imports (torch, …) happen inside the handlers so that `tipsv2 --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipelines.cli import (
    checkpoints,
    data,
    embed,
    evaluate,
    export,
    models,
    pipeline,
    runs,
    serve,
    stack,
    tokenizer,
    train,
    visualize,
)

GROUPS = (
    data,
    train,
    evaluate,
    export,
    visualize,
    embed,
    checkpoints,
    tokenizer,
    stack,
    runs,
    models,
    pipeline,
    serve,
)

DESCRIPTION = """\
TIPSv2 platform: train, distill, evaluate, export and promote TIPSv2
vision-language encoders.

Quick start (no downloads needed):
  tipsv2 model init --variant nano14 --out runs/nano            # random weights
  tipsv2 tokenizer train --corpus captions.txt --out tok.model  # or the official one
  tipsv2 embed image --checkpoint runs/nano image.jpg --output emb.npz
  tipsv2 embed text --checkpoint runs/nano --tokenizer tok.model "a red circle" --output t.json

Official checkpoints (tips_v2_oss_*_{vision,text}.npz) load directly, and
`tipsv2 convert` moves weights between them and native checkpoints.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tipsv2", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tipsv2_core.errors import CheckpointError

    try:
        return int(args.handler(args) or 0)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"tipsv2 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
