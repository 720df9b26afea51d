"""The training loop on real synthetic shards: exact resume, interrupted writes, NaN stops,
worker-count invariance, and distillation with resume."""

from __future__ import annotations

import shutil

import pytest
import torch

from tipsv2_core.checkpoint import COMPLETE_FILE, load_checkpoint
from tipsv2_core.config import apply_overrides
from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.models.io import load_native
from tipsv2_core.recipes import get_recipe
from tipsv2_core.train.checkpointing import latest_checkpoint
from tipsv2_core.train.runs import distill, pretrain

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "synth"
    write_synthetic_dataset(
        str(out), num_images=96, image_size=112, seed=0, shard_size=40, progress=False
    )
    return out


def tiny(dataset, *overrides, steps=20):
    cfg = get_recipe("demo")
    return apply_overrides(
        cfg,
        [
            f"data.path={dataset}",
            f"stages.0.steps={steps}",
            "stages.0.batch_size=8",
            "stages.0.global_size=56",
            "stages.0.local_size=28",
            "data.num_local=2",
            "data.workers=0",
            "data.text_max_len=24",
            "data.tokenizer_vocab=300",
            "heads.out_dim=128",
            "heads.hidden_dim=64",
            "heads.bottleneck_dim=32",
            "run.checkpoint_every=10",
            "run.log_every=5",
            "run.keep_checkpoints=5",
            *overrides,
        ],
    )


def all_state(path):
    model, _, state = load_checkpoint(path, with_state=True)
    return model | {k: v for k, v in state.items() if not k.startswith("rng.")}


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_resume_is_exact(dataset, tmp_path, optimizer):
    opt = f"optim.name={optimizer}"
    straight = pretrain(tiny(dataset, opt), tmp_path / "a", progress=False)
    assert straight.steps == 20 and straight.resumed_from == 0
    first = pretrain(tiny(dataset, opt), tmp_path / "b", progress=False, stop_after=10)
    assert first.steps == 10 and not first.final.exists()
    second = pretrain(tiny(dataset, opt), tmp_path / "b", progress=False)
    assert second.resumed_from == 10 and second.steps == 20
    a, b = (
        all_state(tmp_path / "a/checkpoints/step_00000020"),
        all_state(tmp_path / "b/checkpoints/step_00000020"),
    )
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    # The checkpoint is a model `tipsv2 embed` can load, and so is final/.
    model = load_native(straight.final)
    assert model.variant.name == "nano14"
    metrics = (tmp_path / "a/metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 4 and '"train/ibot_loss"' in metrics[0]


def test_interrupted_checkpoint_write_is_never_picked_up(dataset, tmp_path):
    out = tmp_path / "run"
    pretrain(tiny(dataset, steps=10), out, progress=False)
    ckpts = out / "checkpoints"
    fake = ckpts / "step_00000015"
    shutil.copytree(ckpts / "step_00000010", fake)
    (fake / COMPLETE_FILE).unlink()  # as if the writer died before the marker
    assert latest_checkpoint(out).name == "step_00000010"


def test_nan_stops_with_the_term_and_step(dataset, tmp_path):
    with pytest.raises(FloatingPointError, match=r"clip_cls1_loss is nan at step 1"):
        # τ = 1e-45 (valid, > 0) overflows the logits to inf: the CLIP loss is NaN at once.
        pretrain(tiny(dataset, "model.init_temperature=1e-45"), tmp_path / "nan", progress=False)
    assert latest_checkpoint(tmp_path / "nan") is None


def test_worker_processes_give_the_same_batches(dataset, tmp_path):
    a = pretrain(tiny(dataset, "run.checkpoint_every=3", steps=3), tmp_path / "w0", progress=False)
    b = pretrain(
        tiny(dataset, "data.workers=2", "run.checkpoint_every=3", steps=3),
        tmp_path / "w2",
        progress=False,
    )
    sa, sb = (
        all_state(a.out / "checkpoints/step_00000003"),
        all_state(b.out / "checkpoints/step_00000003"),
    )
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_accumulation_sinkhorn_and_full_ema_run(dataset, tmp_path):
    cfg = tiny(dataset, "optim.accum_steps=2", "loss.centering=sinkhorn", "ema.mode=full", steps=2)
    result = pretrain(cfg, tmp_path / "acc", progress=False)
    assert result.steps == 2
    state = all_state(tmp_path / "acc/checkpoints/step_00000002")
    assert any(k.startswith("arch.teacher_vision.") for k in state)  # the EMA encoder is kept


def test_distillation_runs_and_resumes(dataset, tmp_path):
    teacher = pretrain(tiny(dataset, steps=10), tmp_path / "teacher", progress=False).final
    overrides = [f"distill.teacher={teacher}", "data.num_local=0", "run.checkpoint_every=5"]
    cfg = lambda: apply_overrides(tiny(dataset, steps=10), overrides)  # noqa: E731
    part = distill(cfg(), tmp_path / "student", progress=False, stop_after=5)
    assert part.steps == 5
    done = distill(cfg(), tmp_path / "student", progress=False)
    assert done.resumed_from == 5 and done.steps == 10
    row = done.history[-1]
    assert {"train/patch_loss", "train/cls_loss", "train/clip_loss"} <= set(row)
    student = load_native(done.final)
    # The student is a fresh random init, not a copy of the teacher.
    t = load_native(teacher)
    assert not torch.equal(student.vision.pos_embed, t.vision.pos_embed)
