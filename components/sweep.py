"""What writes killed outright left on a store: datasets and embeddings without COMPLETE.

Every writer of this project commits a dataset (`tipsv2 data synth|curate`) or an
embeddings directory (`tipsv2 embed dataset`) with a `COMPLETE` file written last, and no
reader takes a root without it. On a local disk a write goes to a hidden sibling and is
renamed, and the next write into the same place removes what a dead writer left. On S3
there is no rename: a write killed outright (SIGKILL, a lost node) leaves its objects
under the prefix until the next write to that very prefix. `find_leftovers` lists such
roots anywhere below a bucket or prefix; `sweep` removes them.

A root is recognised by what only our writers put there: a `shards/` or `parts/` folder,
or a `manifest.parquet`, `dataset_card.json` or `embeddings.json` file. A root without
`COMPLETE` whose newest object is younger than `min_age_s` may be a write in progress and
is left alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from components import storage
from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.data.layout import CARD_FILE, MANIFEST_FILE, SHARDS_DIR
from tipsv2_core.search.store import MANIFEST_FILE as EMBEDDINGS_FILE
from tipsv2_core.search.store import PARTS_DIR

ROOT_FOLDERS = (SHARDS_DIR, PARTS_DIR)
ROOT_FILES = (MANIFEST_FILE, CARD_FILE, EMBEDDINGS_FILE)
DEFAULT_MIN_AGE_S = 3600.0


@dataclass(frozen=True)
class Leftover:
    """One incomplete root: its URI, how many objects and bytes, and the age of the newest
    object in seconds."""

    uri: str
    objects: int
    bytes: int
    age_s: float


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


def find_leftovers(
    uri: str | os.PathLike[str], min_age_s: float = DEFAULT_MIN_AGE_S
) -> list[Leftover]:
    """Every root below `uri` (a bucket, a prefix or a local folder) without COMPLETE whose
    newest object is at least `min_age_s` old, shortest URI first."""
    base = os.fspath(uri).rstrip("/")
    files = storage.default_storage().stat_files(base)
    roots = {root for f in files if (root := _root_of(f.name)) is not None}
    # A root inside another root (a folder a dataset holds) belongs to the outer one.
    roots = {r for r in roots if not any(_inside(r, outer) for outer in roots)}
    names = {f.name for f in files}
    now = time.time()
    found = []
    for root in sorted(roots, key=lambda r: (r.count("/"), r)):
        if (f"{root}/{COMPLETE_FILE}" if root else COMPLETE_FILE) in names:
            continue
        below = [f for f in files if not root or f.name.startswith(f"{root}/")]
        age = now - max(f.modified for f in below)
        if age >= min_age_s:
            uri_of = f"{base}/{root}" if root else base
            found.append(Leftover(uri_of, len(below), sum(f.size for f in below), age))
    return found


def sweep(
    uri: str | os.PathLike[str], min_age_s: float = DEFAULT_MIN_AGE_S, delete: bool = False
) -> list[Leftover]:
    """`find_leftovers`, and with `delete` every object of each one removed."""
    found = find_leftovers(uri, min_age_s)
    if delete:
        for leftover in found:
            storage.delete_directory(leftover.uri)
    return found
