"""`tipsv2 search`: nearest neighbours of a text (or an image) over `tipsv2 embed dataset`'s
embeddings, through their faiss index."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search embedded images by text (or by image)",
        description=(
            "Embed the query with the model that embedded the images (recorded in the "
            "index; --model to name it again) and list the nearest images by cosine "
            "similarity, from the faiss index beside the embeddings (built on first use)."
        ),
    )
    p.add_argument("query", nargs="?", default=None, help="the text to search for")
    p.add_argument(
        "--index",
        required=True,
        help="embeddings directory or s3:// prefix (tipsv2 embed dataset)",
    )
    p.add_argument("--image", default=None, help="search by this image instead of a text")
    p.add_argument("-k", "--top", type=int, default=5, help="results (default 5)")
    p.add_argument(
        "--cls",
        default="cls1",
        choices=("cls1", "cls2"),
        help="CLS token to match: cls1 (trained against alt-texts, default) or cls2 "
        "(against captions)",
    )
    p.add_argument("--model", default=None, help="the model, if its recorded place moved")
    p.add_argument("--tracking-uri", default=None, help="MLflow registry (for models:/ URIs)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from components.search import search

    if (args.query is None) == (args.image is None):
        raise ValueError("give a text query or --image FILE (one of them)")
    hits = search(
        args.index, text=args.query, image=args.image, k=args.top, cls=args.cls,
        model=args.model, tracking_uri=args.tracking_uri,
    )  # fmt: skip
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
        return 0
    from pipelines.cli.common import table

    rows = [[str(i + 1), f"{h.score:.4f}", h.key, h.caption or ""] for i, h in enumerate(hits)]
    print(table(["rank", "score", "key", "caption"], rows))
    return 0
