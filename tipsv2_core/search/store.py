"""The embeddings directory `tipsv2 embed dataset` writes and `tipsv2 search` reads:

    <dir>/parts/<shard>.parquet   one per dataset shard: key, shard, split, cls1, cls2
                                  [, caption]; written under a temporary name and renamed
    <dir>/embeddings.json         the manifest: model, dataset, settings, parts done
    <dir>/COMPLETE                written once every shard's part is in place
    <dir>/index/                  the faiss index (index.py)

A part is never half there: it is written as a hidden temporary file and renamed, and
its Parquet key-value metadata names the shard and the settings digest it was made with.
A part counts as done only when it opens (a whole Parquet footer), carries the current
digest, and holds the rows the dataset's manifest lists for its shard; anything else is
made again. The manifest is a summary rewritten (atomically) after each part, so a run
killed between a rename and the manifest update loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tipsv2_core.atomic import COMPLETE_FILE, atomic_file

PARTS_DIR = "parts"
MANIFEST_FILE = "embeddings.json"
INDEX_DIR = "index"
FORMAT = "tipsv2-embeddings/1"
CLS = ("cls1", "cls2")
CAPTION_FIELDS = ("alt_text", "caption_medium", "caption_long")
_META_KEY = b"tipsv2.part"


class EmbeddingsError(ValueError):
    """An embeddings directory that is missing, incomplete or made with other settings."""


@dataclass(frozen=True)
class EmbedSettings:
    """What the embeddings depend on; a rerun with other values is refused (resume would
    mix two models' vectors). model: what the user named; fingerprint: the weights' hash."""

    model: str
    fingerprint: str
    dataset: str
    data_version: str
    image_size: int
    split: str | None = None
    caption: str | None = None

    @property
    def digest(self) -> str:
        """What a part records: every field except where the model and data were found."""
        d = asdict(self)
        d.pop("model")
        d.pop("dataset")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Manifest:
    settings: EmbedSettings
    dim: int = 0
    parts: dict[str, int] = field(default_factory=dict)  # part file name -> rows
    shards: int = 0  # parts expected in all
    complete: bool = False
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise EmbeddingsError(f"{where}: format {doc.get('format')!r}, expected {FORMAT}")
            settings = EmbedSettings(**doc.pop("settings"))
            return cls(settings=settings, **doc)
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise EmbeddingsError(f"{where}: not an embeddings manifest ({e})") from None


def part_name(shard: str) -> str:
    """`shards/train-000003.tar` -> `train-000003.parquet` (shard names are unique)."""
    return Path(shard).name.removesuffix(".tar") + ".parquet"


def part_schema(dim: int, caption: bool) -> pa.Schema:
    vec = pa.list_(pa.float32(), dim)
    fields = [("key", pa.string()), ("shard", pa.string()), ("split", pa.string()),
              ("cls1", vec), ("cls2", vec)]  # fmt: skip
    if caption:
        fields.append(("caption", pa.string()))
    return pa.schema(fields)


def write_part(
    root: Path,
    shard: str,
    digest: str,
    keys: Sequence[str],
    splits: Sequence[str],
    cls1: np.ndarray,
    cls2: np.ndarray,
    captions: Sequence[str] | None = None,
) -> Path:
    """Writes one shard's embeddings (cls1, cls2 [N, D] float32) as a Parquet part,
    through a temporary file renamed into place."""
    n, dim = cls1.shape
    cols: dict[str, Any] = {
        "key": list(keys),
        "shard": [shard] * n,
        "split": list(splits),
        "cls1": pa.FixedSizeListArray.from_arrays(pa.array(cls1.astype(np.float32).ravel()), dim),
        "cls2": pa.FixedSizeListArray.from_arrays(pa.array(cls2.astype(np.float32).ravel()), dim),
    }
    if captions is not None:
        cols["caption"] = list(captions)
    schema = part_schema(dim, captions is not None).with_metadata(
        {_META_KEY: json.dumps({"shard": shard, "digest": digest, "rows": n}).encode()}
    )
    table = pa.table(cols, schema=schema)
    path = root / PARTS_DIR / part_name(shard)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
    return path


def part_info(path: Path) -> dict[str, Any] | None:
    """The part's recorded {shard, digest, rows}, or None when it does not open whole."""
    try:
        pf = pq.ParquetFile(path)
        meta = json.loads((pf.schema_arrow.metadata or {})[_META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    if meta.get("rows") != pf.metadata.num_rows:
        return None
    return meta


def read_manifest(root: Path) -> Manifest | None:
    path = root / MANIFEST_FILE
    if not path.is_file():
        return None
    return Manifest.from_json(path.read_text(), str(path))


def write_manifest(root: Path, manifest: Manifest) -> None:
    with atomic_file(root / MANIFEST_FILE) as tmp:
        tmp.write_text(manifest.to_json())


def mark_complete(root: Path) -> None:
    (root / COMPLETE_FILE).write_text("")


def open_embeddings(path: str | os.PathLike) -> Manifest:
    """The manifest of a complete embeddings directory (EmbeddingsError otherwise)."""
    root = Path(path)
    manifest = read_manifest(root) if root.is_dir() else None
    if manifest is None:
        raise EmbeddingsError(
            f"{root}: no {MANIFEST_FILE}; make one with `tipsv2 embed dataset --out {root}`"
        )
    if not manifest.complete or not (root / COMPLETE_FILE).is_file():
        raise EmbeddingsError(
            f"{root}: incomplete ({len(manifest.parts)} of {manifest.shards} shards embedded); "
            "run the same `tipsv2 embed dataset` again to finish it"
        )
    return manifest


@dataclass
class Embeddings:
    """Every row of a complete embeddings directory, in part-name order."""

    keys: list[str]
    shards: list[str]
    captions: list[str] | None
    vectors: dict[str, np.ndarray]  # cls1 / cls2 -> [N, D] float32


def load_embeddings(path: str | os.PathLike) -> Embeddings:
    root = Path(path)
    manifest = open_embeddings(root)
    tables = []
    for name in sorted(manifest.parts):
        part = root / PARTS_DIR / name
        if part_info(part) is None:
            raise EmbeddingsError(f"{part}: missing or damaged; rerun `tipsv2 embed dataset`")
        tables.append(pq.read_table(part))
    table = pa.concat_tables(tables)
    dim = manifest.dim
    vectors = {
        c: np.asarray(table.column(c).combine_chunks().values, np.float32).reshape(-1, dim)
        for c in CLS
    }
    captions = table.column("caption").to_pylist() if "caption" in table.column_names else None
    return Embeddings(
        table.column("key").to_pylist(), table.column("shard").to_pylist(), captions, vectors
    )
