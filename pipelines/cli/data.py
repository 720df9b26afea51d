"""`tipsv2 data synth|info`: generate the embedded synthetic dataset and inspect datasets."""

from __future__ import annotations

import argparse
import json
import sys

from tipsv2_core.data.worlds import DEFAULT_NUM_IMAGES, DEFAULT_SPLITS, DEFAULT_WORLD, WORLDS


def _splits(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        msg = f"expected three ratios like 0.9,0.05,0.05, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three ratios (train,val,test), got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate or inspect datasets (tar shards + manifest)")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)
    synth = ops.add_parser(
        "synth",
        help="generate the synthetic scenes dataset",
        description=(
            "Generate synthetic scenes (a few objects of the world's classes, pixel-exact "
            "label maps, alt-text / medium / long captions) into a dataset directory: "
            "shards/<split>-NNNNNN.tar, manifest.parquet, dataset_card.json, COMPLETE. "
            "The same arguments give byte-identical shards and manifest."
        ),
    )
    synth.add_argument(
        "--num-images",
        type=int,
        default=DEFAULT_NUM_IMAGES,
        help=f"default {DEFAULT_NUM_IMAGES}, what `make run` trains on",
    )
    synth.add_argument("--image-size", type=int, default=112, help="112..448 (default 112)")
    synth.add_argument("--out", required=True, help="dataset directory: a path or file:// URI")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    synth.add_argument("--workers", type=int, default=1, help="generator processes")
    synth.add_argument(
        "--splits",
        type=_splits,
        default=DEFAULT_SPLITS,
        help="train,val,test ratios (default " + ",".join(map(str, DEFAULT_SPLITS)) + ")",
    )
    synth.add_argument(
        "--world",
        choices=sorted(WORLDS),
        default=DEFAULT_WORLD,
        help=f"which classes and how they look (default {DEFAULT_WORLD}: ten classes, each "
        "with its own texture; shapes26: 26 classes told apart by silhouette only)",
    )
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(handler=run_synth)

    info = ops.add_parser("info", help="show a dataset's counts per split and class names")
    info.add_argument("uri", help="dataset directory: a path or file:// URI")
    info.add_argument("--json", action="store_true", help="print the whole dataset card")
    info.set_defaults(handler=run_info)
    sweep = ops.add_parser(
        "sweep",
        help="list (or --delete) what killed writes left: datasets and embeddings without COMPLETE",
        description=(
            "Find every dataset (shards/, manifest.parquet, dataset_card.json) and embeddings "
            "directory (parts/, embeddings.json) below a bucket, prefix or folder that has no "
            "COMPLETE marker and whose newest file is older than --min-age: what a write "
            "killed outright left (on S3 it stays until the next write to that prefix). "
            "Lists them; --delete removes them."
        ),
    )
    sweep.add_argument("uri", help="s3://bucket[/prefix], a folder, or a file:// URI")
    sweep.add_argument(
        "--min-age",
        type=_duration,
        default=3600.0,
        help="leave roots whose newest file is younger than this alone: a write may be "
        "in progress (default 1h; e.g. 30m, 2h, 0s)",
    )
    sweep.add_argument("--delete", action="store_true", help="remove what is found")
    sweep.set_defaults(handler=run_sweep)
    register_gate(ops)
    register_curate(ops)


def run_synth(args: argparse.Namespace) -> int:
    from tipsv2_core.data.shards import open_dataset
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    path = write_synthetic_dataset(
        args.out,
        num_images=args.num_images,
        image_size=args.image_size,
        seed=args.seed,
        shard_size=args.shard_size,
        splits=args.splits,
        workers=args.workers,
        progress=not args.no_progress,
        world=args.world,
    )
    info = open_dataset(path)
    counts = ", ".join(f"{k} {v}" for k, v in info.counts.items())
    print(f"wrote {path}: {len(info)} samples ({counts}), {len(info.shards())} shards")
    return 0


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except (ValueError, KeyError):
        msg = f"expected a duration like 30m, 2h or 0s, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a duration is not negative, got {text!r}")
    return value


def run_sweep(args: argparse.Namespace) -> int:
    from components.settings import configure
    from components.sweep import sweep

    configure()  # the stack's S3 variables, unless the environment already names a store
    found = sweep(args.uri, min_age_s=args.min_age, delete=args.delete)
    if not found:
        print(f"{args.uri}: nothing to sweep (every dataset and embeddings root is complete)")
        return 0
    for f in found:
        age = f"{f.age_s / 60:.0f} min"
        print(f"{f.uri}  {f.objects} files, {f.bytes / 1e6:.1f} MB, newest {age} ago")
    objects, size = sum(f.objects for f in found), sum(f.bytes for f in found) / 1e6
    verb = "removed" if args.delete else "would remove (--delete to do it)"
    what = "left-over root" if len(found) == 1 else "left-over roots"
    what += " of killed or replaced writes"
    print(f"{verb}: {len(found)} {what}, {objects} files, {size:.1f} MB")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from tipsv2_core.data.shards import open_dataset

    info = open_dataset(args.uri)
    if args.json:
        print(json.dumps(info.card, indent=2))
        return 0
    print(f"dataset   {info.path}")
    print(f"samples   {len(info)}")
    for split, n in info.counts.items():
        print(f"  {split:<7} {n:>8}  ({len(info.shards(split))} shards)")
    gen = info.card.get("generator")
    if gen:
        print(f"generator {gen.get('name')} seed={gen.get('seed')} size={gen.get('image_size')}")
    print(f"classes   {len(info.class_names)}: {', '.join(info.class_names)}")
    return 0


# ---------------------------------------------------------------------------------------
# `data validate|tokenizer|version|remote`: the validation gate, the tokenizer artifact and
# DVC versioning (components.validate / .tokenizer / .versioning). Heavy imports (GX, DVC,
# sentencepiece) stay inside the handlers.


def register_gate(ops: argparse._SubParsersAction) -> None:
    """Adds the gate, tokenizer and versioning subcommands to `tipsv2 data`."""
    val = ops.add_parser(
        "validate",
        help="validation gate: expectations on a dataset's manifest and card",
        description=(
            "Run the Great Expectations suites on a dataset's manifest, class coverage and "
            "card (keys, captions, image sizes, split shares, reject and duplicate rates). "
            "Writes validation.json and validation.html; exits 1 listing the failed "
            "expectations with example rows, so a pipeline stops before training. Only the "
            "metadata is read (for s3:// it is downloaded, the shards are not)."
        ),
    )
    val.add_argument("--data", required=True, help="dataset: a path, file:// or s3:// URI")
    val.add_argument("--config", help="thresholds: a JSON or YAML file (default: built in)")
    val.add_argument("--section", help="read the thresholds from this top-level key of --config")
    val.add_argument(
        "--out", help="folder (path or s3:// URI) for the report (default <data>/validation)"
    )
    val.set_defaults(handler=run_validate)

    tok = ops.add_parser(
        "tokenizer",
        help="train a SentencePiece tokenizer on a dataset's captions (versioned artifact)",
        description=(
            "Train a SentencePiece model (pad 0, unk 1, no BOS/EOS, lowercased) on the "
            "alt-text, medium and long captions of one split, and write tokenizer.model "
            "plus tokenizer.json (its sha256, the dataset and manifest it came from) into "
            "--out. The same dataset and settings give byte-identical files."
        ),
    )
    tok.add_argument("--data", required=True, help="dataset: a path, file:// or s3:// URI")
    tok.add_argument("--vocab-size", type=int, required=True, help="at most this many pieces")
    tok.add_argument("--out", required=True, help="artifact folder: a path or s3:// URI")
    tok.add_argument(
        "--split", default="train", help="split whose captions are used; 'all' for every split"
    )
    tok.set_defaults(handler=run_tokenizer)

    ver = ops.add_parser(
        "version", help="print the DVC version id (md5) of a tracked dataset, for lineage"
    )
    ver.add_argument("path", help="a DVC-tracked output (dvc.lock) or `dvc add`ed path")
    ver.add_argument(
        "--no-check", action="store_true", help="skip the check that the workspace copy matches"
    )
    ver.set_defaults(handler=run_version)

    rem = ops.add_parser(
        "remote",
        help="point the DVC repository's default remote at $TIPSV2_HOME or the stack's S3",
        description=(
            "Write .dvc/config.local (git-ignored): 'local' is $TIPSV2_HOME/dvc-remote, "
            "'s3' is s3://tipsv2/dvc on the local stack's gateway (its credentials stay in "
            "the stack's env file; `source` it before a plain `dvc push`). 'auto' picks s3 "
            "when the stack runs."
        ),
    )
    rem.add_argument("--kind", choices=("auto", "local", "s3"), default="auto")
    rem.add_argument("--repo", default=".", help="the DVC repository (default: .)")
    rem.set_defaults(handler=run_remote)

    for verb, where in (("push", "to"), ("pull", "from")):
        sync = ops.add_parser(
            verb,
            help=f"`dvc {verb}` {where} the default remote, the local one under $TIPSV2_HOME",
            description=(
                f"`dvc {verb}` {where} the repository's default remote (or --remote), after "
                "pointing the 'local' remote at $TIPSV2_HOME/dvc-remote in .dvc/config.local "
                "(the committed path is only right for the default home). With the stack "
                "running, its S3 credentials come from its env file."
            ),
        )
        sync.add_argument("--remote", help="a remote of .dvc/config (default: the default one)")
        sync.add_argument("--repo", default=".", help="the DVC repository (default: .)")
        if verb == "pull":
            sync.add_argument(
                "targets", nargs="*", help="stages to pull with their dependencies (default: all)"
            )
        sync.set_defaults(handler=run_sync, verb=verb)


def _fail(message: str) -> int:
    print(f"tipsv2 data: error: {message}", file=sys.stderr)
    return 2


def run_validate(args: argparse.Namespace) -> int:
    from components.storage import StorageError
    from components.validate import ValidationConfig, load_config, validate

    if args.section and not args.config:
        return _fail("--section needs --config")
    cfg = load_config(args.config, args.section) if args.config else ValidationConfig()
    try:
        result = validate(args.data, cfg, out=args.out)
    except StorageError as e:
        return _fail(str(e))
    if not result.success:
        print(result.message(), file=sys.stderr)
        return 1
    print(result.message())
    return 0


def run_tokenizer(args: argparse.Namespace) -> int:
    from components.storage import StorageError
    from components.tokenizer import build_tokenizer

    split = None if args.split == "all" else args.split
    try:
        art = build_tokenizer(args.data, args.out, vocab_size=args.vocab_size, split=split)
    except StorageError as e:
        return _fail(str(e))
    ds = art.info["dataset"]
    print(
        f"wrote {art.model_uri}: {art.vocab_size} pieces, sha256 {art.sha256[:16]}..., from "
        f"{ds['num_captions']} captions ({args.split} split) of {args.data}"
    )
    return 0


def run_version(args: argparse.Namespace) -> int:
    from components.versioning import VersioningError, dataset_version

    try:
        print(dataset_version(args.path, check=not args.no_check))
    except VersioningError as e:
        return _fail(str(e))
    return 0


def run_remote(args: argparse.Namespace) -> int:
    from components.versioning import VersioningError, configure_remote

    try:
        remote = configure_remote(args.repo, kind=args.kind)
    except VersioningError as e:
        return _fail(str(e))
    print(f"DVC remote of {args.repo}: {remote.name} ({remote.url}), written to .dvc/config.local")
    return 0


def run_sync(args: argparse.Namespace) -> int:
    from components.versioning import VersioningError, pull, push

    try:
        if args.verb == "push":
            out = push(args.repo, args.remote)
        else:
            out = pull(args.repo, args.remote, targets=args.targets)
    except VersioningError as e:
        return _fail(str(e))
    print(out.strip())
    return 0


# ---------------------------------------------------------------------------------------
# `data curate`: image-text sources -> a curated dataset (components.curate, Ray Data).


def register_curate(ops: argparse._SubParsersAction) -> None:
    """Adds `tipsv2 data curate` to the data command group."""
    cur = ops.add_parser(
        "curate",
        help="curate image-text sources into a dataset (Ray Data)",
        description=(
            "Read image folders with sidecar captions (x.jpg + x.txt/x.json), WebDataset tar "
            "shards, CSV/Parquet manifests and COCO caption JSON (paths, file:// or s3://); "
            "decode and verify every image, convert to RGB, filter sizes, normalise captions, "
            "fill missing caption fields, drop exact and near duplicates, split by key hash, "
            "and write shards + manifest.parquet + dataset_card.json + rejected.parquet "
            "atomically. Bad records are rejected with a reason, never fatal; a bad source "
            "or config stops the run before any work. Prints a summary and a JSON line."
        ),
    )
    cur.add_argument(
        "--source", action="append", required=True, metavar="URI",
        help="a folder, .tar shard (or folder of them), .csv/.parquet manifest or COCO .json; "
        "repeat for several",
    )  # fmt: skip
    cur.add_argument("--out", required=True, help="dataset directory: a path, file:// or s3://")
    cur.add_argument("--config", help="curation rules: a JSON or YAML file (default: built in)")
    cur.add_argument(
        "--workers", type=int, default=None,
        help="Ray workers (default: the CPU count); 0 runs in this process without Ray",
    )  # fmt: skip
    cur.add_argument("--ray-address", help="an existing Ray cluster (default: start one here)")
    cur.add_argument("--no-progress", action="store_true", help="no progress bar")
    cur.set_defaults(handler=run_curate)


def run_curate(args: argparse.Namespace) -> int:
    import os

    from components.curate import curate
    from components.storage import StorageError

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    try:
        result = curate(
            args.source,
            args.out,
            args.config,
            workers=workers,
            ray_address=args.ray_address,
            progress=not args.no_progress,
        )
    except StorageError as e:  # e.g. rejected S3 credentials while uploading
        print(f"tipsv2 data curate: error: {e}", file=sys.stderr)
        return 2
    print(result.summary)
    print(json.dumps(result.to_json()))
    return 0
