"""A dataset's metadata files (manifest, card, rejects) as local files, wherever it lives.

Validation and tokenizer training need the small tables of a dataset, never its shards:
for a local path or `file://` URI they are read in place; for `s3://bucket/prefix` only
`manifest.parquet`, `dataset_card.json` and `rejected.parquet` (when present) are
downloaded, into a temporary folder that is removed afterwards. Either way the dataset
must carry its COMPLETE marker: a dataset that is still being written is never read.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from components import storage
from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.data.layout import (
    CARD_FILE,
    MANIFEST_FILE,
    REJECTED_FILE,
    DatasetError,
    local_path,
)

__all__ = ["dataset_input", "dataset_name", "is_remote", "metadata_dir", "publish"]


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for object-store URIs (s3://), False for plain paths and file:// URIs."""
    return storage.parse(uri).is_s3


def _child(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


@contextlib.contextmanager
def metadata_dir(uri: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a local folder holding the dataset's manifest, card and (optional) rejects.

    Raises DatasetError for a dataset without its COMPLETE marker and for a missing
    manifest or card. For S3 the stack's (or the environment's) credentials are used:
    `components.settings.configure()` loads them when the local stack runs.
    """
    text = os.fspath(uri)
    if not is_remote(text):
        root = local_path(text)
        if not root.is_dir():
            raise DatasetError(f"{root}: no such dataset directory")
        if not (root / COMPLETE_FILE).is_file():
            raise DatasetError(
                f"{root}: incomplete dataset (no {COMPLETE_FILE} marker); it is never read"
            )
        yield root
        return

    from components.settings import configure

    configure()  # the stack's S3 variables, unless the environment already names a store
    if not storage.exists(_child(text, COMPLETE_FILE)):
        raise DatasetError(
            f"{text}: incomplete or missing dataset (no {COMPLETE_FILE} object); it is never "
            "read (a write that did not finish leaves one; writing the dataset again "
            "replaces it)"
        )
    with tempfile.TemporaryDirectory(prefix="tipsv2-meta-") as tmp:
        root = Path(tmp)
        for name in (MANIFEST_FILE, CARD_FILE):
            try:
                storage.download_file(_child(text, name), root / name)
            except FileNotFoundError:
                raise DatasetError(f"{_child(text, name)}: missing") from None
        if storage.exists(_child(text, REJECTED_FILE)):
            storage.download_file(_child(text, REJECTED_FILE), root / REJECTED_FILE)
        (root / COMPLETE_FILE).write_text("")
        yield root


def dataset_name(uri: str | os.PathLike[str]) -> str:
    """The dataset's own name (its card's), else its folder's: what metric names and
    MLflow's dataset inputs call it. Only a local card is read."""
    import json

    local = Path(str(uri).removeprefix("file://"))
    name = local.name
    with contextlib.suppress(OSError, ValueError, AttributeError):
        name = json.loads((local / CARD_FILE).read_text()).get("name") or name
    return name


def dataset_input(uri: str, version: str, context: str) -> dict[str, str]:
    """A dataset as `components.tracking.Tracker.log_dataset` takes it: its name, its
    version (DVC md5 or manifest hash) as the digest, its URI as the source; context:
    "training" or "evaluation"."""
    return {"name": dataset_name(uri), "digest": version, "source": str(uri), "context": context}


def publish(local: str | os.PathLike[str], out: str) -> None:
    """Uploads the committed local dataset `local` to the s3:// prefix `out`, so that no
    reader ever takes a partial dataset for a complete one, and none stays behind.

    S3 has no rename, so the COMPLETE object is the commit: it is removed first (the old
    dataset stops counting), then everything else under the prefix goes (the old
    dataset's files, or what a killed write left there: swept here, by the next write),
    the new files go up, and COMPLETE is written last. A write that fails or is
    interrupted (Ctrl-C) removes what it uploaded; only a process killed outright
    leaves a prefix without COMPLETE, which readers refuse (`metadata_dir`) until the
    next write to it sweeps it.
    """
    root = Path(local)
    store = storage.default_storage()
    marker = _child(out, COMPLETE_FILE)
    if store.exists(marker):  # first and alone: from here on no reader takes the prefix
        where = storage.parse(marker)
        store.client(out).delete_object(Bucket=where.bucket, Key=where.key)
    store.delete_directory(out)
    try:
        store.put_directory(root, out, skip=(COMPLETE_FILE,))  # the local copy keeps its own
    except BaseException:
        with contextlib.suppress(Exception):
            store.delete_directory(out)
        raise
    store.write_bytes(marker, b"")
