"""One training per run directory at a time.

Two trainings writing into one `--out` would interleave their metrics.jsonl and overwrite
each other's checkpoints. The driver of a run holds an exclusive `flock` on a hidden
sibling file, `.NAME.lock`, for as long as it runs; a second one is refused with a message
naming the holder (host, pid, command, since when). The kernel drops the lock when its
process dies, however it dies, so a crashed run never leaves a stale lock behind. (flock
is local to one machine on some network file systems; there the lock guards against a
second run on the same machine only.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path


class RunLocked(ValueError):
    """Another process holds the run directory's lock."""


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out).resolve()
    return out.with_name(f".{out.name}.lock")


def _holder(path: Path) -> str:
    try:
        doc = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        doc = {}
    if not doc:
        return "another process"
    return (
        f"pid {doc.get('pid')} on {doc.get('host')} since {doc.get('since')} ({doc.get('command')})"
    )


@contextlib.contextmanager
def run_lock(out: str | os.PathLike, what: str = "training") -> Iterator[Path]:
    """Holds the lock of run directory `out` for the duration of the block.

    Raises RunLocked naming the holder when another process has it.
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(
                f"{Path(out)}: another {what} is running in this run directory "
                f"({_holder(path)}); wait for it to end or choose another --out"
            ) from None
        # The holder before us may have removed the file after we opened it: then we
        # locked a file nobody else can see; start over on the current one.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:3]),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: the next holder re-checks the inode
        os.close(fd)
