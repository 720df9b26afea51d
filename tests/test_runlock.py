"""One training per run directory: a second is refused naming the holder; a killed holder
leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.cli import main
from tipsv2_core.runlock import RunLocked, lock_path, run_lock

pytestmark = pytest.mark.unit

HOLD = """
import sys, time
from tipsv2_core.runlock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of tmp_path/run, as a running training does."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield out, proc
    proc.kill()
    proc.wait()


def test_second_training_is_refused_naming_the_holder(capsys, holder, tmp_path):
    out, proc = holder
    rc = main(["train", "--data", str(tmp_path), "--out", str(out), "--no-ray", "--no-track"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"another training is running in this run directory (pid {proc.pid} on" in err
    assert not (out / "metrics.jsonl").exists()


def test_a_killed_holder_leaves_no_stale_lock(holder):
    out, proc = holder
    with pytest.raises(RunLocked), run_lock(out):
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while True:  # the kernel drops the flock with the process
        try:
            with run_lock(out):
                assert lock_path(out).is_file()
            break
        except RunLocked:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert not lock_path(out).exists()  # removed on release
