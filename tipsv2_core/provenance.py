"""Which code wrote an artefact: the git commit of this checkout and whether its tracked
files differed from that commit. Plain `git` calls, no torch: the tracking layer reads
them too, in processes that never load a model."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout at `cwd` (default: this code's own), None outside git."""
    return _git(["rev-parse", "HEAD"], cwd) or None


def git_dirty(cwd: str | os.PathLike | None = None) -> str | None:
    """ "true" when that checkout's tracked files differ from its commit, "false" when not,
    None outside git. A model trained from uncommitted code cannot be re-run from its
    commit alone, so checkpoints record this beside `git_sha`."""
    out = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return None if out is None else str(bool(out)).lower()


def _git(args: list[str], cwd: str | os.PathLike | None) -> str | None:
    """`git <args>`'s stripped output, or None where git or the checkout is missing (an
    installed wheel, a container image). The default directory is this code's checkout,
    not the caller's working directory: a step run from elsewhere still names the code
    that ran."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
