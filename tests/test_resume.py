"""Resuming a run only with the settings and data it was started with.

The run directory holds a checkpoint whose meta.json records the resolved config and the
data version (as the training loop writes them); `tipsv2 train` with other settings is
refused before anything trains, naming each field, unless the change is accepted with
`--accept-changes` (never a change of shapes such as the variant or the EMA mode).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.versioning import data_version
from pipelines.cli import main
from tipsv2_core.checkpoint import save_checkpoint
from tipsv2_core.config import apply_overrides, to_dict
from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.recipes import get_recipe
from tipsv2_core.train.checkpointing import checkpoint_dir
from tipsv2_core.train.resume import ResumeMismatch, check_resume

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("resume")
    a = write_synthetic_dataset(d / "a", num_images=20, image_size=112, seed=1, progress=False)
    b = write_synthetic_dataset(d / "b", num_images=20, image_size=112, seed=2, progress=False)
    return a, b


def config(data: Path, *sets: str):
    cfg = apply_overrides(get_recipe("demo"), list(sets))
    cfg.data.path = str(data)
    cfg.run.data_version = data_version(data)
    return cfg


@pytest.fixture
def run_dir(tmp_path, datasets) -> Path:
    """A run directory whose latest checkpoint (step 4) was written by the demo recipe."""
    out = tmp_path / "run"
    cfg = config(datasets[0])
    meta = {"step": 4, "config": to_dict(cfg), "data_version": cfg.run.data_version}
    save_checkpoint(checkpoint_dir(out, 4), {"w": torch.zeros(1)}, meta)
    return out


def train(capsys, data: Path, out: Path, *extra: str) -> tuple[int, str]:
    rc = main(["train", "--data", str(data), "--out", str(out), "--no-ray", "--no-track", *extra])
    return rc, capsys.readouterr().err


def test_other_learning_rate_is_refused_naming_the_field(capsys, run_dir, datasets):
    rc, err = train(capsys, datasets[0], run_dir, "--set", "optim.lr=0.002")
    assert rc == 2
    assert "optim.lr (0.001 in the checkpoint, 0.002 now)" in err
    assert "cannot resume from step 4" in err and "--accept-changes" in err
    assert len(err.strip().splitlines()) == 1


def test_other_variant_or_ema_mode_is_refused_even_when_accepted(capsys, run_dir, datasets):
    rc, err = train(
        capsys, datasets[0], run_dir, "--set", "model.variant=ti14", "--set", "ema.mode=head_only",
        "--accept-changes",
    )  # fmt: skip
    assert rc == 2 and "RuntimeError" not in err
    assert "model.variant ('nano14' in the checkpoint, 'ti14' now)" in err
    assert "ema.mode ('full' in the checkpoint, 'head_only' now)" in err
    assert "start a new --out" in err


def test_other_data_is_refused(capsys, run_dir, datasets):
    rc, err = train(capsys, datasets[1], run_dir)
    assert rc == 2 and "data version (" in err


def test_same_settings_longer_stages_and_accepted_changes_resume(run_dir, datasets):
    ckpt = checkpoint_dir(run_dir, 4)
    assert check_resume(ckpt, config(datasets[0])) == []
    # Training longer, on more loader workers, on another device: what resuming is for.
    longer = config(datasets[0], "stages.0.steps=500", "data.workers=0", "run.device=cpu")
    assert check_resume(ckpt, longer) == []
    changed = config(datasets[0], "loss.ibot_weight=1.0")
    with pytest.raises(ResumeMismatch, match="loss.ibot_weight"):
        check_resume(ckpt, changed)
    assert [c.field for c in check_resume(ckpt, changed, accept=True)] == ["loss.ibot_weight"]


def test_the_pipeline_step_and_the_cluster_job_refuse_a_mismatch_too(run_dir, datasets):
    """The DAG's training step (`train_model`, what the pretrain and distil components
    call) and the Ray job of a cluster run check as `tipsv2 train` does, before Ray."""
    from components.steps.train import train_model
    from components.train_entry import JobOptions, run_job

    field = r"optim\.lr \(0\.001 in the checkpoint, 0\.002 now\)"
    version = data_version(datasets[0])
    with pytest.raises(ResumeMismatch, match=field):
        train_model("pretrain", str(run_dir), str(datasets[0]), "", version=version,
                    overrides=["optim.lr=0.002"], track=False)  # fmt: skip
    cfg = config(datasets[0], "optim.lr=0.002")
    with pytest.raises(ResumeMismatch, match=field):
        run_job(to_dict(cfg), "pretrain", str(run_dir), JobOptions(track=False))
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]  # nothing trained
