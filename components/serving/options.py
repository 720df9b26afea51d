"""The options of `tipsv2 serve` / `python -m components.serving`, in a module of their own
with no heavy import, so that building the CLI's parser (`tipsv2 --help`) stays instant."""

from __future__ import annotations

import argparse

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS (followed: the server swaps when the alias moves), "
        "models:/NAME/VERSION, an ONNX export directory or a native checkpoint directory",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--tracking-uri", default=None, help="MLflow registry (for models:/ URIs)")
    p.add_argument("--tokenizer", default=None, help="default: the export's own tokenizer.model")
    p.add_argument(
        "--int8-tolerance",
        type=float,
        default=None,
        help="serve the export's int8 graphs when their max |Δ| measured at export is within "
        "this (default: always fp32)",
    )
    p.add_argument(
        "--image-size", type=int, default=448, help="side images are resized to (default 448)"
    )
    p.add_argument("--max-batch", type=int, default=16, help="rows per model call (default 16)")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="batching wait for company (default 5)"
    )
    p.add_argument(
        "--max-queue", type=int, default=256, help="rows queued per model before 503 (default 256)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument(
        "--max-body-mb", type=float, default=16.0, help="request body limit (default 16 MiB)"
    )
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="decoded pixels per image")
    p.add_argument("--max-classes", type=int, default=64, help="class names per segmentation")
    p.add_argument("--max-items", type=int, default=32, help="images or texts per request")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between alias checks")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--index",
        default=None,
        help="an embeddings directory or s3:// prefix (tipsv2 embed dataset) to search "
        "from the web page (GET /) and POST /api/search",
    )
