"""Directories that appear all at once: write into a hidden sibling, then rename.

Checkpoints and datasets are both written this way, so a reader sees either the previous
complete directory or the new complete one, never a half-written mix. A COMPLETE marker
is written last, inside the temporary directory, before the rename.

A writer that is killed (or whose disk fills up) leaves its hidden sibling behind. Its
name says which host and process wrote it, `.NAME.tmp-HOST-PID-NS`, so the next write
into the same folder can remove the leftovers of processes of this host that are gone
(`sweep_stale`) without touching a write still in progress elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

COMPLETE_FILE = "COMPLETE"

# .NAME.tmp-HOST-PID-NS (a write) and .NAME.old-HOST-PID-NS (a replaced directory).
_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[^/]*)-(?P<pid>\d+)-\d+$")


class OutputExistsError(ValueError):
    """A writer's output path holds something it would destroy by replacing it."""


def _host() -> str:
    # A name a sibling's regex can take apart again: no `-` in the host part.
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname() or "host")


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden directory next to `path` to write into.

    First removes what dead writers of this host left in the same folder (`sweep_stale`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{_host()}-{os.getpid()}-{time.monotonic_ns()}")
    tmp.mkdir()
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale(folder: Path) -> list[Path]:
    """Removes the temporary siblings in `folder` whose writer was a process of this host
    that no longer runs; returns what was removed.

    A `.tmp-` sibling is a write that never finished: it is never read (no rename, no
    COMPLETE in place). An `.old-` sibling is a directory a commit moved aside; it is
    removed only once its replacement is in place (else it is the last complete copy and
    is left for a person to restore). Siblings of other hosts are left alone: on a shared
    file system their writer may still be running.
    """
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    host = _host()
    for entry in entries:
        m = _SIBLING.match(entry.name)
        if m is None or m["host"] != host or _alive(int(m["pid"])):
            continue
        if m["kind"] == "old" and not (folder / m["name"]).exists():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def check_replaceable(
    path: str | os.PathLike, *, force: bool = False, what: str = "output"
) -> Path:
    """Refuses to write a directory over anything but an empty (or missing) directory.

    The writers replace `path` as a whole (`commit_directory`), so a user's folder given
    by mistake would be deleted with everything in it. `force` allows replacing a
    directory; a file is never replaced. Raises OutputExistsError naming the path.
    """
    path = Path(path)
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise OutputExistsError(f"{path}: is a file, not a {what} directory")
    if force or not path.exists():
        return path
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise OutputExistsError(f"{path}: cannot be read ({e.strerror})") from None
    if entries:
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise OutputExistsError(
            f"{path}: exists and is not empty ({shown}); refusing to replace it "
            "(--force replaces it)"
        )
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling of file `path` to write; renames it to `path` when the
    block succeeds, removes it when it fails (a full disk, an error), so `path` is either
    the old file or the complete new one. The temporary name keeps the suffix (numpy
    appends `.npz` to names without it)."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a directory, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{_host()}-{os.getpid()}-{time.monotonic_ns()}")
    tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def commit_directory(tmp: Path, path: Path) -> Path:
    """Writes COMPLETE into `tmp` and renames it to `path`, replacing any previous one.

    The previous directory is moved aside first and deleted only once the new one is in
    place, so an interrupted commit never leaves `path` half written.
    """
    (tmp / COMPLETE_FILE).write_text("")
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{_host()}-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
