"""`tipsv2 tokenizer train|encode`: SentencePiece models for from-scratch runs."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train or try a SentencePiece tokenizer")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)
    train = ops.add_parser(
        "train",
        help="train a tokenizer on a caption corpus (one caption per line)",
        description="Train a SentencePiece model (pad 0, unk 1, no BOS/EOS, lowercased input).",
    )
    train.add_argument(
        "--corpus", required=True, nargs="+", help="text files, one caption per line"
    )
    train.add_argument("--out", required=True, help="output tokenizer.model")
    train.add_argument("--vocab-size", type=int, default=8000)
    train.set_defaults(handler=run_train)

    enc = ops.add_parser("encode", help="show the ids and pieces of texts")
    enc.add_argument("--tokenizer", required=True)
    enc.add_argument("texts", nargs="+")
    enc.set_defaults(handler=run_encode)


def _lines(paths: list[str]):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            yield from f


def run_train(args: argparse.Namespace) -> int:
    from tipsv2_core.text import Tokenizer, train_tokenizer

    out = train_tokenizer(_lines(args.corpus), args.out, vocab_size=args.vocab_size)
    print(f"wrote {out} ({Tokenizer(out).vocab_size} pieces)")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from tipsv2_core.text import Tokenizer

    tok = Tokenizer(args.tokenizer)
    for text, ids in zip(args.texts, tok.encode(args.texts), strict=True):
        pieces = [tok.sp.IdToPiece(i) for i in ids]
        print(json.dumps({"text": text, "ids": ids, "pieces": pieces}))
    return 0
