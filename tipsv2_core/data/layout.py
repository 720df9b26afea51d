"""The on-disk contract of a dataset directory, and where datasets may live.

    <dataset>/shards/<split>-NNNNNN.tar   WebDataset-style shards, one split per shard
    <dataset>/manifest.parquet            one row per sample (MANIFEST_SCHEMA)
    <dataset>/rejected.parquet            what curation dropped, with the reason
    <dataset>/dataset_card.json           counts, histograms, class names, generator
    <dataset>/COMPLETE                    written last; a directory without it is refused

A dataset is written into a temporary sibling directory and renamed into place
(`tipsv2_core.atomic.commit_directory`), so readers see the previous complete dataset
or the new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 1
SHARDS_DIR = "shards"
MANIFEST_FILE = "manifest.parquet"
REJECTED_FILE = "rejected.parquet"
CARD_FILE = "dataset_card.json"

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),  # relative to the dataset root, e.g. shards/train-000000.tar
        ("alt_text", pa.string()),
        ("caption_medium", pa.string()),
        ("caption_long", pa.string()),
        ("source", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("classes", pa.list_(pa.string())),
        ("sha256", pa.string()),
        ("phash", pa.string()),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [("key", pa.string()), ("source", pa.string()), ("reason", pa.string())]
)


class DatasetError(ValueError):
    """A dataset is missing, incomplete, corrupt or unsafe; the message names file and key."""


def local_path(uri: str | os.PathLike) -> Path:
    """The local path of a dataset location: a plain path or a `file://` URI.

    Remote schemes (s3://, gs://, http://, …) are refused: object storage is handled by
    the `components` layer, which stages data to a local directory first.
    """
    text = os.fspath(uri)
    if "://" not in text:
        return Path(text)
    parsed = urlparse(text)
    if parsed.scheme != "file":
        raise DatasetError(
            f"{text}: {parsed.scheme}:// locations are not readable here; remote storage is "
            "handled by the components layer (stage the data to a local path or file:// URI)"
        )
    if parsed.netloc not in ("", "localhost"):
        raise DatasetError(f"{text}: file:// URIs must name a local path (host {parsed.netloc!r})")
    return Path(unquote(parsed.path))


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Writes a JSON document (indented, keys in the order given)."""
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _write_table(path: Path, rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> None:
    columns: dict[str, list] = {n: [] for n in schema.names}
    for row in rows:
        for n in schema.names:
            columns[n].append(row[n])
    pq.write_table(pa.table(columns, schema=schema), path)


def write_manifest(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Writes manifest rows (dicts with the MANIFEST_SCHEMA fields) as parquet."""
    _write_table(path, rows, MANIFEST_SCHEMA)


def write_rejected(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Writes the rejects table (key, source, reason); empty for generated data."""
    _write_table(path, rows, REJECTED_SCHEMA)


def read_manifest(root: Path) -> pa.Table:
    """The manifest of a dataset directory, checked against MANIFEST_SCHEMA."""
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: missing manifest")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: unreadable parquet ({e})") from None
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}")
    return table


def read_card(root: Path) -> dict[str, Any]:
    """The dataset card, with its required fields checked."""
    path = root / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing dataset card") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(card, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    missing = [
        k for k in ("format_version", "counts", "num_samples", "class_names") if k not in card
    ]
    if missing:
        raise DatasetError(f"{path}: missing fields {missing}")
    if not isinstance(card["format_version"], int):
        raise DatasetError(f"{path}: format_version must be an integer")
    if card["format_version"] > FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format_version {card['format_version']} is newer than this reader "
            f"({FORMAT_VERSION}); update tipsv2"
        )
    counts = card["counts"]
    if not isinstance(counts, dict) or not all(
        isinstance(v, int) and v >= 0 for v in counts.values()
    ):
        raise DatasetError(f"{path}: 'counts' must map split names to sample counts")
    return card
