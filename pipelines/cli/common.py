"""What several command groups share: the `--tracking-uri/--json` options of the commands
that read MLflow, `--precision` of the commands that run a model, and the terminal table
printer."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

MAX_CELL = 48  # characters; longer cells end in `…`


def add_tracking_uri(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--tracking-uri`, resolved later by `components.tracking.resolve_tracking_uri`."""
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, the local stack, "
        "or sqlite:///$TIPSV2_HOME/mlflow.db)",
    )


def resolve_checkpoint(value: str, *, native: bool = False) -> str:
    """`--checkpoint` as a local path: a `models:/NAME@ALIAS` or `models:/NAME/VERSION`
    becomes its registered ONNX export (downloaded once into $TIPSV2_HOME/cache), or with
    `native` the native checkpoint the version was exported from (its `checkpoint_uri`),
    for commands that need PyTorch weights. Anything else is returned as it is."""
    if not value.startswith("models:/"):
        return value
    from components.registry import native_checkpoint, resolve_model_uri

    return str(native_checkpoint(value) if native else resolve_model_uri(value))


def add_precision(parser: argparse.ArgumentParser) -> None:
    """`--precision fp32|bf16` of the commands that run a model (tipsv2_core/precision.py;
    the names are spelled out so `tipsv2 --help` imports no torch)."""
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="compute precision of a PyTorch checkpoint: bf16 runs the matmuls in bf16 "
        "over the fp32 weights (faster on CPUs with AVX512-BF16/AMX; outputs within 1e-2 "
        "of fp32, README 'Performance'). ONNX exports run in their own precision "
        "(default fp32)",
    )


def tracking_options() -> argparse.ArgumentParser:
    """A parent parser (`parents=[...]`) with `--tracking-uri` and `--json`."""
    common = argparse.ArgumentParser(add_help=False)
    add_tracking_uri(common)
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    common.set_defaults(needs_tracking=True)  # main() checks the server answers first
    return common


# MLflow's client retries a dead server for minutes by default; a command someone waits
# on gives up sooner (each still overridable in the environment).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def check_tracking(tracking_uri: str | None) -> None:
    """Fails at once, in one line, when the tracking server does not answer."""
    import os

    from components.tracking.client import require_reachable

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    require_reachable(tracking_uri)


def cell(value: Any, limit: int | None = MAX_CELL) -> str:
    """`value` on one line, cut to `limit` characters (None: never) with `…`."""
    text = str(value).replace("\n", " ")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    header: bool = True,
    max_cell: int | None = MAX_CELL,
    numbers_right: bool = True,
    rule: bool = False,
) -> str:
    """Aligned columns two spaces apart; trailing spaces stripped.

    header: print `headers` as the first line (else they only fix the column count);
    max_cell: cut longer cells; numbers_right: right-align columns that hold only
    numbers (a missing value may be `-`, and `0.45 (-0.05)` counts as a number); rule: a
    line of dashes under the header.
    """
    cells = [[cell(c, max_cell) for c in row] for row in rows]
    heads = [cell(h, max_cell) for h in headers]
    ncol = max([len(heads), *(len(r) for r in cells)])
    for r in cells:
        r.extend([""] * (ncol - len(r)))
    heads.extend([""] * (ncol - len(heads)))
    width = [
        max([len(heads[i]) if header else 0, *(len(r[i]) for r in cells)]) for i in range(ncol)
    ]
    numeric = [
        numbers_right and all(_is_number(r[i]) for r in cells if r[i]) and any(r[i] for r in cells)
        for i in range(ncol)
    ]

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(width[i]) if numeric[i] else c.ljust(width[i]) for i, c in enumerate(row)]
        return "  ".join(parts).rstrip()

    out = [line(heads)] if header else []
    if header and rule:
        out.append(line(["-" * w for w in width]))
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_number(text: str) -> bool:
    head = text.split(" (")[0]  # "0.45 (-0.05)" counts as a number
    if head == "-":  # a missing value in a column of numbers
        return True
    try:
        float(head)
    except ValueError:
        return False
    return True
