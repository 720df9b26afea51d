"""`tipsv2_core.provenance`: the commit and dirty flag a checkpoint records, read with the
real `git` from repositories made in a temporary directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tipsv2_core.provenance import git_dirty, git_sha

pytestmark = pytest.mark.unit


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_checkout_is_clean_until_a_tracked_file_changes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "add", "code.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    assert git_sha(repo) == _git(repo, "rev-parse", "HEAD")
    assert git_dirty(repo) == "false"
    (repo / "notes.txt").write_text("untracked files are not the code that ran\n")
    assert git_dirty(repo) == "false"
    (repo / "code.py").write_text("x = 2\n")
    assert git_dirty(repo) == "true"


def test_outside_a_checkout_both_are_unknown(tmp_path):
    assert git_sha(tmp_path) is None and git_dirty(tmp_path) is None


def test_a_checkpoint_records_whether_its_code_was_committed(tmp_path):
    """Written by the process that trained it, not guessed later by whoever registers it."""
    import torch

    from tipsv2_core.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {"step": 1})
    meta = json.loads((path / "meta.json").read_text())
    assert (meta["git_sha"], meta["git_dirty"]) == (git_sha(), git_dirty())
    assert meta["git_dirty"] in ("true", "false")  # the tests run from a git checkout


def test_the_reproduction_record_keeps_the_checkpoints_own_dirty_flag(tmp_path):
    from components.reproduce.record import capture

    ckpt = tmp_path / "run" / "final"
    ckpt.mkdir(parents=True)
    meta = {"step": 3, "git_sha": "a" * 40, "git_dirty": "true", "config": {"data": {}}}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert capture(ckpt, git_dirty="false")["git_dirty"] == "true"
    # A checkpoint written before the flag existed: the registering checkout's guess.
    del meta["git_dirty"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert capture(ckpt, git_dirty="false")["git_dirty"] == "false"
