"""Smoke test of the real CLI at tiny size: synth -> train -> embed -> distill (+ resume)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))
TINY = {
    "stages.0.batch_size": 8,
    "stages.0.global_size": 56,
    "stages.0.local_size": 28,
    "data.num_local": 2,
    "data.workers": 1,
    "data.text_max_len": 24,
    "data.tokenizer_vocab": 300,
    "heads.out_dim": 128,
    "heads.hidden_dim": 64,
    "heads.bottleneck_dim": 32,
    "run.checkpoint_every": 4,
    "run.log_every": 2,
}


def sets(**extra) -> list[str]:
    out = []
    for key, value in {**TINY, **{k.replace("__", "."): v for k, v in extra.items()}}.items():
        out += ["--set", f"{key}={value}"]
    return out


def run(*args: str, stderr: list[str] | None = None) -> dict:
    """Runs tipsv2 and returns the JSON summary on its last output line (and appends its
    stderr to `stderr`, when given)."""
    res = subprocess.run([TIPSV2, *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    if stderr is not None:
        stderr.append(res.stderr)
    lines = res.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}


def dead_tracking_uri() -> str:
    """A tracking server URI where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.long
def test_synth_train_embed_distill(tmp_path):
    data = tmp_path / "synth"
    run("data", "synth", "--num-images", "64", "--image-size", "112", "--out", f"file://{data}")
    out = tmp_path / "run"
    train = ["train", "--recipe", "demo", "--data", str(data), "--out", str(out), "--quiet"]
    # On Ray, with a tracking server that is down all along: training goes on, and the
    # driver says what rank 0's tracker could not deliver (its log stays on the worker).
    err: list[str] = []
    dead = ["--tracking-uri", dead_tracking_uri()]
    summary = run(*train, *dead, *sets(stages__0__steps=8), stderr=err)
    assert summary["steps"] == 8 and summary["resumed_from"] == 0
    assert "could not be reached during the run" in err[0], err[0][-2000:]
    assert "never reached" in err[0] and "metrics.jsonl holds every value" in err[0]
    assert "could not end the parent run" in err[0]
    assert {"ibot_loss", "dino_loss", "clip_loss", "loss"} <= set(summary)
    # The same command again resumes from the last checkpoint and has nothing left to do.
    assert run(*train, *sets(stages__0__steps=8))["resumed_from"] == 8

    with tarfile.open(next((data / "shards").glob("train-*.tar"))) as tar:
        member = next(m for m in tar if m.name.endswith(".png") and ".mask" not in m.name)
        (tmp_path / "x.png").write_bytes(tar.extractfile(member).read())
    embed = ["embed", "image", "--checkpoint", str(out / "final"), "--image-size", "112"]
    run(*embed, str(tmp_path / "x.png"), "--output", str(tmp_path / "e.npz"))
    assert np.load(tmp_path / "e.npz")["cls1"].shape == (1, 96)

    student = tmp_path / "student"
    distill = ["distill", "--teacher", str(out / "final"), "--student-variant", "nano14"]
    distill += ["--data", str(data), "--out", str(student), "--quiet"]
    assert run(*distill, *sets(data__num_local=0, stages__0__steps=6))["steps"] == 6
    last = run(*distill, *sets(data__num_local=0, stages__0__steps=10))
    assert last["resumed_from"] == 6 and last["steps"] == 10  # extended from its final step


@pytest.mark.parametrize("path", ["ray", "no-ray"])
def test_a_diverged_training_is_one_line_and_exit_1(tmp_path, path):
    """A loss that turns NaN ends the run at once with the term and the step: exit 1,
    no traceback, no checkpoint, and on Ray no restart (a retry would diverge again)."""
    data = tmp_path / "synth"
    run("data", "synth", "--num-images", "32", "--image-size", "112", "--out", f"file://{data}")
    out = tmp_path / "run"
    # τ = 1e-45 (valid, > 0) overflows the CLIP logits: the loss is NaN at the first step.
    cmd = [TIPSV2, "train", "--recipe", "demo", "--data", str(data), "--out", str(out)]
    cmd += ["--quiet", "--no-track", *sets(model__init_temperature="1e-45")]
    cmd += ["--no-ray"] if path == "no-ray" else []
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    line = "tipsv2 train: failed: clip_cls1_loss is nan at step 1; training stopped"
    assert line in res.stderr, res.stderr[-3000:]
    assert not list(out.glob("step_*")) and not (out / "final").exists()
    if path == "ray":
        assert len((out / "attempts.jsonl").read_text().splitlines()) == 1


def test_training_is_tracked_in_mlflow_with_lineage(tmp_path):
    """The embedded default: MLflow in SQLite under TIPSV2_HOME (set per test session)."""
    data = tmp_path / "synth"
    run("data", "synth", "--num-images", "48", "--image-size", "112", "--out", str(data))
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--quiet", "--no-ray"]
    run(*args, "--experiment", "lineage-test", *sets(stages__0__steps=4))
    listed = subprocess.run(
        [TIPSV2, "runs", "list", "--experiment", "lineage-test", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    (step,) = [r for r in runs if r["tags"].get("step") == "train"]
    assert step["status"] == "FINISHED" and step["parent_run_id"]
    # A standalone run made its parent run, and ended it.
    (parent,) = [r for r in runs if r["run_id"] == step["parent_run_id"]]
    assert parent["status"] == "FINISHED"
    assert step["params"]["model.variant"] == "nano14" and step["params"]["stages.0.steps"] == "4"
    assert step["tags"]["data_version"].startswith("manifest-sha256:")
    assert step["tags"]["checkpoint_uri"] == str(out.resolve())
    assert {"train/loss", "train/clip_loss", "train/lr", "train/images_per_s"} <= set(
        step["metrics"]
    )
