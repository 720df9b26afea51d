"""What writes killed outright left on a store: datasets and embeddings without COMPLETE.

Every writer of this project commits a dataset (`tipsv2 data synth|curate`) or an
embeddings directory (`tipsv2 embed dataset`) with a `COMPLETE` file written last, and no
reader takes a root without it. On a local disk a write goes to a hidden sibling and is
renamed, and the next write into the same place removes what a dead writer left. On S3
there is no rename: each write uploads a version folder of its own and commits it by
writing the prefix's `COMPLETE` (components.s3_publish), then removes what it replaced.
A write killed outright leaves, until the next write to that very prefix, a version no
`COMPLETE` names (killed before its commit), or the objects its commit replaced (killed
after it). `find_leftovers` lists such objects anywhere below a bucket or prefix; `sweep`
removes them.

A root is recognised by what only our writers put there: a `shards/` or `parts/` folder,
or a `manifest.parquet`, `dataset_card.json` or `embeddings.json` file. It is left over
when it has no `COMPLETE`; a version folder (`PREFIX/versions/v…`) when its prefix's
`COMPLETE` does not name it; and the files of a dataset written whole at a prefix
(before versions) when that prefix's `COMPLETE` names a version instead. Anything whose
newest object is younger than `min_age_s` may be a write in progress and is left alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from components import storage
from components.s3_publish import parse_pointer, version_parent
from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.data.layout import CARD_FILE, MANIFEST_FILE, REJECTED_FILE, SHARDS_DIR
from tipsv2_core.search.store import INDEX_DIR, PARTS_DIR
from tipsv2_core.search.store import MANIFEST_FILE as EMBEDDINGS_FILE

ROOT_FOLDERS = (SHARDS_DIR, PARTS_DIR)
ROOT_FILES = (MANIFEST_FILE, CARD_FILE, EMBEDDINGS_FILE)
# Everything a writer puts directly into a root (what a versioned write replaces).
WRITER_FOLDERS = (SHARDS_DIR, PARTS_DIR, INDEX_DIR)
WRITER_FILES = (*ROOT_FILES, REJECTED_FILE)
DEFAULT_MIN_AGE_S = 3600.0
# What a prefix's COMPLETE can say besides a version's name (components.s3_publish).
WHOLE = ""  # empty: the root holds the directory itself, as written before versions
UNREADABLE = "?"


@dataclass(frozen=True)
class Leftover:
    """What a killed write left below one root: its URI, how many objects and bytes, the
    age of the newest in seconds, and, when only some of the root's objects are left
    over, their names relative to it (`names`; empty: the whole root)."""

    uri: str
    objects: int
    bytes: int
    age_s: float
    names: tuple[str, ...] = ()


def _root_of(name: str) -> str | None:
    """The root folder (relative, "" for the listed prefix itself) that `name` belongs to,
    or None for a file no writer of ours makes."""
    parts = name.split("/")
    for i, part in enumerate(parts[:-1]):
        if part in ROOT_FOLDERS:
            return "/".join(parts[:i])
    if parts[-1] in ROOT_FILES:
        return "/".join(parts[:-1])
    return None


def _inside(root: str, outer: str) -> bool:
    return root != outer and (outer == "" or root.startswith(f"{outer}/"))


def _join(root: str, name: str) -> str:
    return f"{root}/{name}" if root else name


def _below(root: str, name: str) -> bool:
    return not root or name.startswith(f"{root}/")


def _writer_file(root: str, name: str) -> bool:
    """True for a file a writer puts directly into `root` (not a report beside it)."""
    if not _below(root, name):
        return False
    rel = name[len(root) + 1 :] if root else name
    top = rel.split("/", 1)
    return (len(top) == 2 and top[0] in WRITER_FOLDERS) or rel in WRITER_FILES


def find_leftovers(
    uri: str | os.PathLike[str], min_age_s: float = DEFAULT_MIN_AGE_S
) -> list[Leftover]:
    """Every left-over root (or part of one) below `uri` (a bucket, a prefix or a local
    folder) whose newest object is at least `min_age_s` old, shortest URI first."""
    base = os.fspath(uri).rstrip("/")
    store = storage.default_storage()
    files = store.stat_files(base)
    names = {f.name for f in files}
    found_roots = {root for f in files if (root := _root_of(f.name)) is not None}
    # A version folder is judged by its prefix's COMPLETE, never swallowed by the prefix.
    versions = {r for r in found_roots if version_parent(r) is not None}
    plain = found_roots - versions
    # A root inside another root (a folder a dataset holds) belongs to the outer one.
    plain = {r for r in plain if not any(_inside(r, outer) for outer in plain)}

    pointers: dict[str, str | None] = {}

    def pointer(prefix: str) -> str | None:
        """What `prefix`'s COMPLETE says: the version it names, WHOLE (empty: the root
        was written whole), UNREADABLE (then nothing that depends on it is touched), or
        None when there is no COMPLETE."""
        if prefix not in pointers:
            marker = _join(prefix, COMPLETE_FILE)
            value = None
            if marker in names:
                try:
                    data = store.read_bytes(f"{base}/{marker}")
                    value = parse_pointer(data, marker) or WHOLE
                except (storage.StorageError, ValueError):
                    value = UNREADABLE
            pointers[prefix] = value
        return pointers[prefix]

    now = time.time()
    found: list[Leftover] = []

    def add(root: str, select: Callable[[str], bool], *, whole: bool) -> None:
        chosen = [f for f in files if select(f.name)]
        if not chosen:
            return
        age = now - max(f.modified for f in chosen)
        if age < min_age_s:
            return
        where = f"{base}/{root}" if root else base
        part = () if whole else tuple(f.name[len(root) + 1 :] if root else f.name for f in chosen)
        found.append(Leftover(where, len(chosen), sum(f.size for f in chosen), age, part))

    unfinished = {r for r in plain if pointer(r) is None}
    for root in unfinished:  # no COMPLETE: a write that never finished, all of it
        add(root, lambda n, r=root: _below(r, n), whole=True)
    for root in plain - unfinished:
        if pointer(root) not in (WHOLE, UNREADABLE):  # a version is current, not the copy
            in_versions = [v for v in versions if _inside(v, root)]
            add(
                root,
                lambda n, r=root, vs=in_versions: (
                    _writer_file(r, n) and not any(_below(v, n) for v in vs)
                ),
                whole=False,
            )
    for version in versions:
        parent = version_parent(version) or ""
        if any(_below(r, version) for r in unfinished):
            continue  # removed with the unfinished root it lies in
        relative = version[len(parent) + 1 :] if parent else version
        if pointer(parent) in (UNREADABLE, relative):
            continue
        add(version, lambda n, v=version: _below(v, n), whole=True)
    return sorted(found, key=lambda f: (f.uri.count("/"), f.uri))


def remove(leftovers: Sequence[Leftover]) -> None:
    """Deletes exactly what `find_leftovers` listed."""
    store = storage.default_storage()
    for leftover in leftovers:
        if leftover.names:
            store.delete_files(leftover.uri, leftover.names)
        else:
            store.delete_directory(leftover.uri)


def sweep(
    uri: str | os.PathLike[str], min_age_s: float = DEFAULT_MIN_AGE_S, delete: bool = False
) -> list[Leftover]:
    """`find_leftovers`, and with `delete` every object of each one removed."""
    found = find_leftovers(uri, min_age_s)
    if delete:
        remove(found)
    return found
