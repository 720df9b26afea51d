"""bench/gpu.sh's CPU fallback: without a GPU it runs every part at tiny sizes, writes
its JSON files and says plainly that the GPU part was skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.slow
def test_gpu_script_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        ["bash", "bench/gpu.sh", "--cpu-smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "GPU part SKIPPED" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gpu_part"].startswith("skipped")
    for name in ("train_step", "inference", "loader", "allreduce", "allreduce_gloo"):
        assert f"{name}.json" in summary["files"], summary["files"]
    train = json.loads((out / "train_step.json").read_text())
    assert train["device"] == "cpu" and train["rows"][0]["flops_per_step"] > 0
    assert train["rows"][0]["images_per_s"] > 0
    reduce = json.loads((out / "allreduce_gloo.json").read_text())
    assert reduce["sum_correct"] is True  # 1 + 2 on both ranks
    loader = json.loads((out / "loader.json").read_text())
    assert all(r["images_per_s_per_core"] > 0 for r in loader["rows"])
    assert not (out / "tmp").exists()  # the smoke run's datasets are cleaned up
