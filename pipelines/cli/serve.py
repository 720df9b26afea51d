"""`tipsv2 serve`: the champion (or any export) behind the Open Inference Protocol."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from components.serving.options import add_arguments

    p = sub.add_parser(
        "serve",
        help="serve a model over the Open Inference Protocol (KServe v2 REST)",
        description=(
            "Serve image embedding, text embedding and zero-shot segmentation over the "
            "KServe v2 REST protocol (/v2/...), with a JSON route per task (/api/...), "
            "Prometheus /metrics, dynamic batching and a bounded queue. With "
            "models:/NAME@ALIAS the server follows the alias and swaps models live."
        ),
    )
    add_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from components.serving.server import run as serve

    return serve(args)
