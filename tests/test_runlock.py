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


def test_the_pipeline_step_and_the_cluster_job_take_the_lock_too(holder, tmp_path):
    """The DAG's training step and the Ray job of a cluster run are refused like
    `tipsv2 train`, before Ray starts."""
    from components.steps.train import train_model
    from components.train_entry import JobOptions, run_job
    from tipsv2_core.config import to_dict
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset
    from tipsv2_core.recipes import get_recipe

    out, proc = holder
    data = write_synthetic_dataset(tmp_path / "d", num_images=8, image_size=112, progress=False)
    holder_named = f"another training is running in this run directory \\(pid {proc.pid} on"
    with pytest.raises(RunLocked, match=holder_named):
        train_model("pretrain", str(out), str(data), "", track=False)
    cfg = get_recipe("demo")
    cfg.data.path = str(data)
    with pytest.raises(RunLocked, match=holder_named):
        run_job(to_dict(cfg), "pretrain", str(out), JobOptions(track=False))
    assert not (out / "metrics.jsonl").exists()
