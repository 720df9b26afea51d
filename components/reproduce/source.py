"""The recorded code: a temporary git worktree at the commit a model was trained from."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{7,40}$")


class SourceError(ValueError):
    """The recorded code cannot be checked out (unknown or dirty commit, no repository)."""


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and done.returncode != 0:
        raise SourceError(f"git {' '.join(args)} in {repo}: {done.stderr.strip()}")
    return done


def find_repository(start: str | Path | None = None) -> Path:
    """The git repository holding `start` (default: this code's own checkout)."""
    here = Path(start) if start else Path(__file__).resolve().parent
    done = _git(here, "rev-parse", "--show-toplevel", check=False)
    if done.returncode != 0:
        raise SourceError(f"{here}: not inside a git repository (use --repo)")
    return Path(done.stdout.strip())


def check_commit(repo: Path, sha: str | None, git_dirty: str | None = None) -> str:
    """The full SHA of the recorded commit; SourceError when it is unknown, is not in
    `repo`, or the model was trained from uncommitted changes (`git_dirty == "true"`)."""
    if not sha or sha == "unknown" or not _SHA.match(sha):
        raise SourceError(
            f"the model records no git commit (git_sha={sha!r}); nothing to check out"
        )
    if git_dirty == "true":
        raise SourceError(
            f"the model was trained from uncommitted changes on top of {sha[:12]} "
            "(git_dirty=true): that code is not in any commit, so it cannot be re-run "
            "(--allow-dirty re-runs the commit itself)"
        )
    done = _git(repo, "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}", check=False)
    if done.returncode != 0:
        raise SourceError(
            f"commit {sha[:12]} is not in the repository {repo} (fetch it, or pass --repo)"
        )
    return done.stdout.strip()


@contextlib.contextmanager
def worktree(repo: Path, sha: str, keep: bool = False) -> Iterator[Path]:
    """A detached git worktree of `repo` at `sha` in a temporary folder, removed after
    (unless `keep`)."""
    parent = Path(tempfile.mkdtemp(prefix="tipsv2-reproduce-src-"))
    path = parent / "src"
    _git(repo, "worktree", "add", "--detach", "--quiet", str(path), sha)
    try:
        yield path
    finally:
        if not keep:
            _git(repo, "worktree", "remove", "--force", str(path), check=False)
            shutil.rmtree(parent, ignore_errors=True)
            _git(repo, "worktree", "prune", check=False)
