"""components.evaluation: what a report records about the model it evaluated."""

from __future__ import annotations

import json

import pytest

from components.evaluation import checkpoint_lineage, run_history

pytestmark = pytest.mark.unit


def test_lineage_of_a_native_checkpoint_comes_from_its_meta(tmp_path):
    ckpt = tmp_path / "run" / "final"
    ckpt.mkdir(parents=True)
    meta = {
        "step": 7,
        "data_version": "manifest-sha256:ab",
        "git_sha": "c0ffee",
        "git_dirty": "false",
        "config": {},
    }
    (ckpt / "meta.json").write_text(json.dumps(meta))
    (ckpt / "COMPLETE").write_text("")
    lineage = checkpoint_lineage(ckpt, "nano14")
    assert lineage == {"checkpoint": str(ckpt), "variant": "nano14", **meta}


def test_an_onnx_export_has_no_meta_json_and_still_has_a_lineage(tmp_path):
    """An export directory is a directory but not a native checkpoint: `tipsv2 eval` on
    an export must not look for its meta.json."""
    export = tmp_path / "onnx"
    export.mkdir()
    (export / "export_meta.json").write_text("{}")
    lineage = checkpoint_lineage(export, "nano14")
    assert lineage["checkpoint"] == str(export) and lineage["step"] is None


def test_history_is_the_metrics_of_the_run_the_checkpoint_came_from(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    rows = [{"step": 1, "train/loss": 3.0}, {"step": 2, "train/loss": 2.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_history(run / "checkpoints" / "step_2") == rows
    assert run_history(run / "final") == rows
    assert run_history(tmp_path / "elsewhere" / "x") == []
