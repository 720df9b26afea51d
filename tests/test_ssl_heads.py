"""bench/ssl_heads.py reads a run's self-distillation heads from its own checkpoint, and
tells a head at the constant solution (prototypes all alike: logits equal over k, targets
uniform) from one that is not."""

from __future__ import annotations

import math

import pytest
import torch

from bench.ssl_heads import head_stats
from tests.test_bf16 import tiny
from tipsv2_core.checkpoint import load_checkpoint, save_checkpoint
from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.train.checkpointing import latest_checkpoint
from tipsv2_core.train.runs import pretrain

pytestmark = pytest.mark.integration


def test_head_stats_tell_a_uniform_head_from_a_trained_one(tmp_path):
    data = tmp_path / "synth"
    write_synthetic_dataset(str(data), num_images=32, image_size=112, seed=0, progress=False)
    run = pretrain(tiny(data, steps=3), tmp_path / "run", progress=False).out

    trained = head_stats(run, teacher_temp=None)
    assert trained["teacher_temp"] == 0.07  # the run's own final τ_t
    for head in ("cls", "patch"):
        h = trained[head]
        assert h["ln_k"] == pytest.approx(math.log(128))  # tiny(): heads.out_dim=128
        assert h["logit_std_over_k"] > 0.01
        for c in ("center", "sinkhorn"):
            assert 0 < h[f"target_entropy_{c}"] < h["ln_k"] - 1e-3, (head, c, h)

    # The constant solution, written into the same checkpoint: every teacher prototype the
    # same vector, so cos(z, w_k) is equal over k whatever z is, and the EMA centre (the
    # running mean of those logits) equal over k too.
    ckpt = latest_checkpoint(run)
    model, meta, state = load_checkpoint(ckpt, with_state=True)
    for key in [k for k in state if k.startswith("arch.teacher_heads.") and "prototypes" in k]:
        state[key] = state[key][:1].expand_as(state[key]).clone()
    for key in ("arch.dino_loss.center", "arch.ibot_loss.center"):
        state[key] = torch.full_like(state[key], 0.3)
    save_checkpoint(ckpt, model, meta, state)
    uniform = head_stats(run, teacher_temp=None)
    for head in ("cls", "patch"):
        h = uniform[head]
        assert h["logit_std_over_k"] < 1e-5, h
        for c in ("center", "sinkhorn"):
            assert h[f"target_entropy_{c}"] == pytest.approx(h["ln_k"], abs=1e-3), (c, h)
