"""The `tipsv2` command line.

Each command group lives in its own module with a `register(subparsers)` function; heavy
imports (torch, …) happen inside the handlers so that `tipsv2 --help` stays instant.
"""

from __future__ import annotations

import argparse
import errno
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
    reproduce,
    runs,
    search,
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
    search,
    checkpoints,
    tokenizer,
    stack,
    runs,
    models,
    reproduce,
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
    """Runs one command; a user error is one line on stderr naming the thing, exit 2.

    User errors are ValueError (bad values, files, configs; the library's own errors
    derive from it), OSError from files and sockets (missing, unwritable, a full disk,
    refused connections) and the services' errors marked UserError. A run that failed
    for a stated reason (RunFailed: a training that diverged) is one line and exit 1.
    Anything else is a bug and keeps its traceback. Ctrl-C ends with one line and exit 130.
    """
    from tipsv2_core.errors import RunFailed

    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "needs_tracking", False):
            from pipelines.cli.common import check_tracking

            check_tracking(args.tracking_uri)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"tipsv2 {args.command}: interrupted", file=sys.stderr)
        return 130
    except RunFailed as e:
        print(f"tipsv2 {args.command}: failed: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        message = user_error(e, output=_output_of(args))
        if message is None:
            raise
        print(f"tipsv2 {args.command}: error: {message}", file=sys.stderr)
        return 2


# A disk that cannot take the output: the message names the output the user gave, not the
# hidden temporary sibling the writer was filling (nothing of it stays).
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def _output_of(args: argparse.Namespace) -> str | None:
    """The output path or URI a command was given (`--out`, `--output`, `convert`'s
    `dst`), if any."""
    for name in ("out", "output", "dst"):
        value = getattr(args, name, None)
        if isinstance(value, str) and value:
            return value
    return None


def user_error(e: BaseException, output: str | None = None) -> str | None:
    """The one-line message of a user error, None for anything else (a bug). `output`:
    the command's output, named by full- and read-only-disk errors."""
    from tipsv2_core.errors import UserError

    if isinstance(e, OSError) and not isinstance(e, UserError) and e.strerror:
        where = e.filename if e.filename is not None else ""
        if output and e.errno in DISK_ERRNOS:
            where = output
        text = f"{where}: {e.strerror}" if where else e.strerror
    elif isinstance(e, ValueError | OSError | UserError):
        text = str(e) or type(e).__name__
    else:
        return None
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
