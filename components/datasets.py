"""A dataset's metadata files (manifest, card, rejects) as local files, wherever it lives.

Validation and tokenizer training need the small tables of a dataset, never its shards:
for a local path or `file://` URI they are read in place; for `s3://bucket/prefix` only
`manifest.parquet`, `dataset_card.json` and `rejected.parquet` (when present) are
downloaded, from the version the prefix's COMPLETE names (components.s3_publish), into a
temporary folder that is removed afterwards. Either way the dataset must carry its
COMPLETE marker: a dataset that is still being written is never read. `publish` (from
components.s3_publish) is how every writer puts a dataset on S3.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from components import storage
from components.s3_publish import current_root, publish
from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.data.layout import (
    CARD_FILE,
    MANIFEST_FILE,
    REJECTED_FILE,
    DatasetError,
    local_path,
)

__all__ = [
    "dataset_input",
    "dataset_metadata",
    "dataset_name",
    "is_remote",
    "metadata_dir",
    "publish",
]


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for object-store URIs (s3://), False for plain paths and file:// URIs."""
    return storage.parse(uri).is_s3


@contextlib.contextmanager
def metadata_dir(uri: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a local folder holding the dataset's manifest, card and (optional) rejects.

    Raises DatasetError for a dataset without its COMPLETE marker and for a missing
    manifest or card. For S3 the stack's (or the environment's) credentials are used:
    `components.settings.configure()` loads them when the local stack runs.
    """
    with dataset_metadata(uri) as (root, _):
        yield root


# How often a reader starts over when the version it was reading was replaced under it.
READ_ATTEMPTS = 3


@contextlib.contextmanager
def dataset_metadata(uri: str | os.PathLike[str]) -> Iterator[tuple[Path, str]]:
    """`metadata_dir`, and where the dataset's files are read from: `uri` itself for a
    local dataset, the published version `COMPLETE` names for an s3:// prefix
    (components.s3_publish), so that shards read later come from the same version."""
    text = os.fspath(uri)
    if not is_remote(text):
        root = local_path(text)
        if not root.is_dir():
            raise DatasetError(f"{root}: no such dataset directory")
        if not (root / COMPLETE_FILE).is_file():
            raise DatasetError(
                f"{root}: incomplete dataset (no {COMPLETE_FILE} marker); it is never read"
            )
        yield root, text
        return

    from components.settings import configure

    configure()  # the stack's S3 variables, unless the environment already names a store
    with tempfile.TemporaryDirectory(prefix="tipsv2-meta-") as tmp:
        folder = Path(tmp)
        source = _download_metadata(text, folder)
        (folder / COMPLETE_FILE).write_text("")
        yield folder, source


def _download_metadata(uri: str, folder: Path) -> str:
    """Downloads the metadata of the dataset published at `uri` into `folder`; returns
    the version read. A rewrite that commits (and removes the old version) while this
    reads makes it start over on the new version, so a reader never mixes two."""
    attempt = 0
    while True:
        attempt += 1
        root = current_root(uri)
        if root is None:
            raise DatasetError(
                f"{uri}: incomplete or missing dataset (no {COMPLETE_FILE} object); it is "
                "never read (a write that did not finish leaves one; writing the dataset "
                "again replaces it)"
            )
        try:
            for name in (MANIFEST_FILE, CARD_FILE):
                storage.download_file(storage.child(root, name), folder / name)
            if storage.exists(storage.child(root, REJECTED_FILE)):
                storage.download_file(storage.child(root, REJECTED_FILE), folder / REJECTED_FILE)
            return root
        except FileNotFoundError as e:
            if attempt < READ_ATTEMPTS and current_root(uri) != root:
                continue  # replaced while we read: read the new version
            missing = getattr(e, "uri", None) or storage.child(root, MANIFEST_FILE)
            raise DatasetError(f"{missing}: missing") from None


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
