"""Datasets of WebDataset-style tar shards: open, validate, list shards, iterate samples.

The public face of the shard format. A dataset directory (layout.py) holds
`shards/<split>-NNNNNN.tar`, `manifest.parquet`, `dataset_card.json` and `COMPLETE`;
`open_dataset` refuses anything incomplete or inconsistent, `list_shards` gives the shard
paths of a split (to divide among workers), and `iter_samples` reads them in memory,
checking every shard against the manifest. The tar format itself: tarshards.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.data.layout import (
    CARD_FILE,
    MANIFEST_FILE,
    SHARDS_DIR,
    DatasetError,
    local_path,
    read_card,
    read_manifest,
)
from tipsv2_core.data.tarshards import (
    OnError,
    Sample,
    ShardWriter,
    encode_sample,
    problem,
    read_shard,
)

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "Sample",
    "ShardWriter",
    "encode_sample",
    "iter_samples",
    "list_shards",
    "local_path",
    "open_dataset",
    "read_shard",
]


@dataclass(frozen=True)
class DatasetInfo:
    """A complete dataset directory: its card and manifest, validated against each other."""

    path: Path
    card: dict[str, Any]
    manifest: pa.Table

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.card["counts"])

    @property
    def class_names(self) -> list[str]:
        return list(self.card["class_names"])

    def __len__(self) -> int:
        return self.manifest.num_rows

    def shards(self, split: str | None = None) -> list[str]:
        """Shard paths relative to the dataset root, sorted, optionally of one split."""
        if split is not None and split not in self.counts:
            raise DatasetError(f"{self.path}: no split {split!r}; it has {list(self.counts)}")
        names = self.manifest.column("shard").to_pylist()
        splits = self.manifest.column("split").to_pylist()
        return sorted({n for n, s in zip(names, splits, strict=True) if split in (None, s)})

    def keys_by_shard(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        cols = self.manifest.select(["shard", "key"]).to_pydict()
        for shard, key in zip(cols["shard"], cols["key"], strict=True):
            out.setdefault(shard, []).append(key)
        return out


def _safe_relative(root: Path, rel: str, where: str) -> Path:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise DatasetError(f"{where}: shard path {rel!r} leaves the dataset directory")
    return root / p


def open_dataset(path: str | os.PathLike) -> DatasetInfo:
    """Reads and validates a dataset directory (plain path or file:// URI).

    Refuses a directory without the COMPLETE marker, a card or manifest that is missing,
    unreadable or inconsistent (counts, duplicate keys), and shards that are not there.
    """
    root = local_path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory")
    if not (root / COMPLETE_FILE).is_file():
        if not any((root / f).exists() for f in (MANIFEST_FILE, CARD_FILE, SHARDS_DIR)):
            raise DatasetError(
                f"{root}: not a dataset directory (no {COMPLETE_FILE}, {MANIFEST_FILE} "
                f"or {CARD_FILE})"
            )
        raise DatasetError(
            f"{root}: incomplete dataset (no {COMPLETE_FILE} marker); it was being written "
            "when its writer stopped and is never read"
        )
    card = read_card(root)
    manifest = read_manifest(root)
    where = str(root / MANIFEST_FILE)
    cols = manifest.select(["key", "split", "shard"]).to_pydict()
    if manifest.num_rows != card["num_samples"]:
        raise DatasetError(
            f"{where}: {manifest.num_rows} rows but the card counts {card['num_samples']} samples"
        )
    counts: dict[str, int] = {}
    for split in cols["split"]:
        counts[split] = counts.get(split, 0) + 1
    if counts != {k: v for k, v in card["counts"].items() if v}:
        raise DatasetError(
            f"{where}: rows per split {counts} differ from the card {card['counts']}"
        )
    if len(set(cols["key"])) != len(cols["key"]):
        raise DatasetError(f"{where}: duplicate sample keys")
    for shard in sorted(set(cols["shard"])):
        if not _safe_relative(root, shard, where).is_file():
            raise DatasetError(f"{root / shard}: shard listed in the manifest is missing")
    return DatasetInfo(root, card, manifest)


def list_shards(path: str | os.PathLike, split: str | None = None) -> list[str]:
    """Shard paths (relative to the dataset root) of a split, to divide among workers."""
    return open_dataset(path).shards(split)


def iter_samples(
    path: str | os.PathLike,
    split: str | None = None,
    shards: list[str] | None = None,
    on_error: OnError = "raise",
) -> Iterator[Sample]:
    """Samples of a complete dataset: all, one split, and/or the given shards, in order.

    Each shard is checked against the manifest: a sample it does not list, or a listed
    sample that is missing (a truncated shard), is an error (a warning with "skip").
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    info = open_dataset(path)
    expected = info.keys_by_shard()
    if shards is None:
        chosen = info.shards(split)
    else:
        chosen = []
        for s in shards:
            p = Path(os.fspath(s))
            rel = p.as_posix()
            if p.is_absolute() and p.is_relative_to(info.path):
                rel = p.relative_to(info.path).as_posix()
            if rel not in expected:
                raise DatasetError(f"{info.path}: {s} is not a shard of this dataset")
            chosen.append(rel)
    for rel in chosen:
        want = expected[rel]
        want_set, got = set(want), set()
        shard = _safe_relative(info.path, rel, rel)
        for sample in read_shard(shard, on_error, name=str(shard)):
            if sample.key not in want_set:
                problem(on_error, f"{shard}: sample {sample.key!r} is not in the manifest")
                continue
            got.add(sample.key)
            if split is None or sample.meta.get("split") == split:
                yield sample
        missing = [k for k in want if k not in got]
        if missing:
            problem(
                on_error,
                f"{shard}: {len(missing)} of {len(want)} samples missing or unreadable "
                f"(first: {missing[0]!r}); the shard is truncated or damaged",
            )
