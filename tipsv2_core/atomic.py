"""Directories that appear all at once: write into a hidden sibling, then rename.

Checkpoints and datasets are both written this way, so a reader sees either the previous
complete directory or the new complete one, never a half-written mix. A COMPLETE marker
is written last, inside the temporary directory, before the rename.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

COMPLETE_FILE = "COMPLETE"


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden directory next to `path` to write into."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    tmp.mkdir()
    return tmp


def commit_directory(tmp: Path, path: Path) -> Path:
    """Writes COMPLETE into `tmp` and renames it to `path`, replacing any previous one.

    The previous directory is moved aside first and deleted only once the new one is in
    place, so an interrupted commit never leaves `path` half written.
    """
    (tmp / COMPLETE_FILE).write_text("")
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
