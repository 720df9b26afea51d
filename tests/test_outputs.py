"""Writers never destroy what they did not write, and clean up after killed writes.

`model init`, `export` and `convert` replace their output directory as a whole; given a
folder that holds anything, they refuse (exit 2, one line naming it) unless `--force`.
Hidden `.NAME.tmp-…` directories of writers that died are removed by the next write into
the same folder, and only those of dead processes of this host.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main
from tipsv2_core.atomic import check_replaceable, sweep_stale, temporary_sibling
from tipsv2_core.checkpoint import is_complete, save_checkpoint

pytestmark = pytest.mark.unit
HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())  # as the writers spell it


def tipsv2(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def precious(tmp_path) -> Path:
    """A user's folder that a mistyped --out could name."""
    d = tmp_path / "thesis"
    d.mkdir()
    (d / "chapter1.tex").write_text("years of work")
    return d


def assert_intact(d: Path) -> None:
    assert (d / "chapter1.tex").read_text() == "years of work"


def test_model_init_refuses_a_non_empty_out_unless_forced(capsys, precious, tmp_path):
    rc, out, err = tipsv2(capsys, "model", "init", "--variant", "nano14", "--out", str(precious))
    assert rc == 2 and out == ""
    assert err.strip().count("\n") == 0  # one line
    assert str(precious) in err and "not empty" in err and "--force" in err
    assert_intact(precious)
    # An empty folder is fine, and --force replaces a full one.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tipsv2(capsys, "model", "init", "--variant", "nano14", "--out", str(empty))[0] == 0
    assert is_complete(empty)
    rc, _, _ = tipsv2(
        capsys, "model", "init", "--variant", "nano14", "--out", str(precious), "--force"
    )
    assert rc == 0 and is_complete(precious) and not (precious / "chapter1.tex").exists()


def test_model_init_refuses_an_out_that_is_a_file(capsys, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    rc, _, err = tipsv2(capsys, "model", "init", "--variant", "nano14", "--out", str(f), "--force")
    assert rc == 2 and "is a file" in err and f.read_text() == "keep"


def test_export_and_convert_refuse_a_non_empty_destination(capsys, precious, tmp_path):
    ckpt = tmp_path / "ckpt"
    assert tipsv2(capsys, "model", "init", "--variant", "nano14", "--out", str(ckpt))[0] == 0
    rc, _, err = tipsv2(capsys, "export", "--checkpoint", str(ckpt), "--out", str(precious))
    assert rc == 2 and str(precious) in err and "not empty" in err
    assert_intact(precious)

    # convert: an official pair into a native directory, and back into existing files.
    pair = tmp_path / "release" / "tips_v2_nano"
    assert tipsv2(capsys, "convert", str(ckpt), str(pair))[0] == 0
    rc, _, err = tipsv2(capsys, "convert", str(pair), str(precious))
    assert rc == 2 and str(precious) in err
    assert_intact(precious)
    vision = pair.with_name("tips_v2_nano_vision.npz")
    before = vision.read_bytes()
    rc, _, err = tipsv2(capsys, "convert", str(ckpt), str(pair))
    assert rc == 2 and "tips_v2_nano_vision.npz: exists" in err and "--force" in err
    assert vision.read_bytes() == before
    assert tipsv2(capsys, "convert", str(ckpt), str(pair), "--force")[0] == 0
    assert tipsv2(capsys, "convert", str(pair), str(precious), "--force")[0] == 0
    assert is_complete(precious)


def test_check_replaceable_accepts_missing_and_empty(tmp_path):
    assert check_replaceable(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "e").mkdir()
    assert check_replaceable(tmp_path / "e") == tmp_path / "e"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_write_sweeps_what_dead_writers_left(tmp_path):
    import torch

    runs = tmp_path / "checkpoints"
    runs.mkdir()
    host = HOST
    dead = _dead_pid()
    leftover = runs / f".step_000010.tmp-{host}-{dead}-123"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(bytes(1 << 16))  # a half-written file
    live = runs / f".step_000020.tmp-{host}-{os.getpid()}-456"  # a write in progress here
    live.mkdir()
    elsewhere = runs / f".step_000030.tmp-otherhost-{dead}-789"  # another host's write
    elsewhere.mkdir()
    # A replaced directory moved aside: its replacement is in place, so it is garbage;
    # an `.old-` whose target is missing is the last complete copy and stays.
    (runs / "step_000005").mkdir()
    replaced = runs / f".step_000005.old-{host}-{dead}-1"
    replaced.mkdir()
    orphan = runs / f".step_000007.old-{host}-{dead}-2"
    orphan.mkdir()

    save_checkpoint(runs / "step_000040", {"w": torch.zeros(2)}, {"step": 40})
    left = {p.name for p in runs.iterdir()}
    assert leftover.name not in left and replaced.name not in left
    assert {live.name, elsewhere.name, orphan.name, "step_000040"} <= left
    assert sweep_stale(runs) == []  # nothing more to remove


def test_a_dataset_write_sweeps_too(tmp_path):
    host = HOST
    leftover = tmp_path / f".synth.tmp-{host}-{_dead_pid()}-1"
    leftover.mkdir()
    tmp = temporary_sibling(tmp_path / "synth")
    assert not leftover.exists() and tmp.exists()
