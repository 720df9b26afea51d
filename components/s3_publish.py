"""Publishing a dataset or embeddings directory to an s3:// prefix, and finding it again.

S3 has no rename and no way to replace several objects at once, so a rewrite that put the
new files over the old ones (or deleted the old ones first) would leave, when it fails
half-way, a prefix holding neither the old dataset nor the new one. Instead each write
goes to a version folder of its own, and one small object switches readers over:

    PREFIX/versions/vYYYYMMDDTHHMMSSZ-XXXXXXXX/...   the files of one write, COMPLETE last
    PREFIX/COMPLETE                                  {"version": "versions/v…"}: the commit

`publish` uploads the new version, then writes `COMPLETE` naming it (a single PUT: a
reader sees the old pointer or the new one), and only then deletes what the prefix held
before (the old version, a dataset written whole at the prefix before versions existed,
what killed writes left). A write that fails before the commit removes its own version
and leaves the previous dataset as it was; one killed outright leaves a version that no
`COMPLETE` names, which `components.sweep` finds (a version's own `COMPLETE` only makes
it a complete copy to download; whether it is current is the prefix's `COMPLETE`'s
say). Readers call `current_root`: the
version `COMPLETE` names, or the prefix itself when `COMPLETE` is empty (a prefix written
before versions, read as it always was), or None when there is no `COMPLETE` at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path

from components import storage
from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.data.layout import DatasetError

__all__ = [
    "VERSIONS_DIR",
    "current_root",
    "is_version",
    "new_version",
    "parse_pointer",
    "publish",
    "version_parent",
]

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
# A version's folder name: when it was written (UTC) and 32 random bits, so that two
# writes never share a name and a listing sorts them by age.
_VERSION = re.compile(rf"^{VERSIONS_DIR}/v\d{{8}}T\d{{6}}Z-[0-9a-f]{{8}}$")
_VERSION_AT_END = re.compile(rf"(?:^|/){VERSIONS_DIR}/v\d{{8}}T\d{{6}}Z-[0-9a-f]{{8}}$")


def new_version() -> str:
    """A fresh version folder name, relative to the prefix."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{VERSIONS_DIR}/v{stamp}-{secrets.token_hex(4)}"


def is_version(relative: str) -> bool:
    """True for a version folder name as `new_version` makes them."""
    return bool(_VERSION.match(relative))


def version_parent(path: str) -> str | None:
    """The prefix (relative, "" for the top) whose version folder `path` is, else None."""
    m = _VERSION_AT_END.search(path)
    if m is None:
        return None
    return path[: m.start()]


def parse_pointer(data: bytes, where: str) -> str | None:
    """The version a `COMPLETE` object names; None for an empty one (a directory written
    whole at the prefix). Raises DatasetError for anything else."""
    text = data.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        version = json.loads(text)["version"]
    except (ValueError, KeyError, TypeError):
        version = None
    if not isinstance(version, str) or not is_version(version):
        raise DatasetError(f"{where}: not a COMPLETE marker of a published dataset")
    return version


def current_root(uri: str | os.PathLike[str]) -> str | None:
    """Where the complete directory published at the s3:// prefix `uri` is read from: the
    version its `COMPLETE` names, the prefix itself for an empty `COMPLETE`, or None while
    the prefix has no `COMPLETE` (never written, or a write that has not finished)."""
    text = os.fspath(uri).rstrip("/")
    marker = storage.child(text, COMPLETE_FILE)
    try:
        data = storage.read_bytes(marker)
    except storage.NotFound:
        return None
    version = parse_pointer(data, marker)
    return text if version is None else storage.child(text, version)


def publish(local: str | os.PathLike[str], out: str) -> str:
    """Uploads the committed local directory `local` to the s3:// prefix `out` as a new
    version, commits it by writing `COMPLETE`, then removes what the prefix held before;
    returns the version's URI.

    Until the commit readers see the previous dataset, whole; after it the new one. A
    failure before the commit (an upload error, Ctrl-C) removes the new version and
    re-raises, leaving the prefix as it was. A failure to remove the old objects after
    the commit only warns: the dataset is published, and `tipsv2 data sweep` or the next
    write removes them.
    """
    root = Path(local)
    out = out.rstrip("/")
    store = storage.default_storage()
    before = store.list_files(out)  # what the commit supersedes: removed after it
    version = new_version()
    target = storage.child(out, version)
    marker = storage.child(out, COMPLETE_FILE)
    pointer = (json.dumps({"version": version}) + "\n").encode()
    try:
        # The version's own COMPLETE after its files, so that a download of it is
        # complete or refused; then the pointer, the commit.
        store.put_directory(root, target, skip=(COMPLETE_FILE,))
        store.write_bytes(storage.child(target, COMPLETE_FILE), b"")
        store.write_bytes(marker, pointer)
    except BaseException:
        # A PUT whose answer was lost (or interrupted) may still have landed: a committed
        # version must stay, so the pointer is read back before anything is removed.
        if not _holds(store, marker, pointer):
            with contextlib.suppress(Exception):
                store.delete_directory(target)
        raise
    stale = [name for name in before if name != COMPLETE_FILE]
    try:
        store.delete_files(out, stale)
    except Exception as e:
        log.warning(
            "%s: published %s, but %d objects of the previous write could not be removed "
            "(%s); `tipsv2 data sweep` finds them",
            out, version, len(stale), e,
        )  # fmt: skip
    return target


def _holds(store: storage.Storage, marker: str, pointer: bytes) -> bool:
    """True when `marker` holds `pointer` (False also when it cannot be read)."""
    try:
        return store.read_bytes(marker) == pointer
    except Exception:
        return False
