"""The TIPSv2 meta-architecture: one step of every loss, the EMA teacher, parameter counts."""

from __future__ import annotations

import pytest
import torch

from tipsv2_core.config import LossCfg, apply_overrides
from tipsv2_core.recipes import get_recipe
from tipsv2_core.train.meta_arch import TIPSv2MetaArch

pytestmark = pytest.mark.unit


def batch(b=4, g=56, loc=28, m=2, n_text=10, two=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = (g // 14) ** 2
    masks = torch.zeros(b, n, dtype=torch.bool)
    masks[:, : n * 3 // 4] = True
    ids = torch.randint(1, 500, (b, n_text), generator=gen)
    out = {
        "global_crops": torch.rand(b, 3, g, g, generator=gen),
        "local_crops": torch.rand(b, m, 3, loc, loc, generator=gen),
        "masks": masks,
        "cls1_ids": ids,
        "cls1_pad": torch.zeros(b, n_text, dtype=torch.int32),
    }
    if two:
        out["cls2_ids"], out["cls2_pad"] = ids.flip(0), out["cls1_pad"]
    return out


def small_cfg(*overrides):
    cfg = get_recipe("demo")
    return apply_overrides(
        cfg, ["heads.out_dim=64", "heads.hidden_dim=32", "heads.bottleneck_dim=16", *overrides]
    )


def test_one_step_produces_every_term_and_gradients():
    torch.manual_seed(0)
    arch = TIPSv2MetaArch(small_cfg())
    total, parts = arch.training_forward(batch(), teacher_temp=0.04)
    assert set(parts) == {
        "ibot_loss", "dino_loss", "clip_loss", "clip_cls1_loss", "clip_cls2_loss",
        "clip_pooled_loss",
    }  # fmt: skip
    w = arch.cfg.loss
    expect = (
        w.clip_weight * parts["clip_loss"]
        + w.dino_weight * parts["dino_loss"]
        + w.ibot_weight * parts["ibot_loss"]
        + w.pooled_clip_weight * parts["clip_pooled_loss"]
    )
    torch.testing.assert_close(total.detach(), expect)
    total.backward()
    trainable = dict(arch.trainable_modules().named_parameters())
    no_grad = [n for n, p in trainable.items() if p.grad is None and "token_embedding" not in n]
    assert no_grad == []
    assert all(p.grad is None for p in arch.teacher_heads.parameters())  # EMA only


def test_the_pooled_clip_term_is_off_in_the_papers_loss_and_weighted_when_on():
    assert LossCfg().pooled_clip_weight == 0  # the paper's loss; the demo adds the term
    torch.manual_seed(0)
    arch = TIPSv2MetaArch(small_cfg("loss.pooled_clip_weight=0"))
    assert "clip_pooled_loss" not in arch.training_forward(batch(), teacher_temp=0.04)[1]
    torch.manual_seed(0)
    arch = TIPSv2MetaArch(small_cfg("loss.pooled_clip_weight=0.5"))
    total, parts = arch.training_forward(batch(), teacher_temp=0.04)
    w = arch.cfg.loss
    expect = (
        w.clip_weight * parts["clip_loss"]
        + w.dino_weight * parts["dino_loss"]
        + w.ibot_weight * parts["ibot_loss"]
        + 0.5 * parts["clip_pooled_loss"]
    )
    torch.testing.assert_close(total.detach(), expect)
    # Alone, the term trains the text tower and the patch path of the vision tower.
    arch = TIPSv2MetaArch(
        small_cfg("loss.pooled_clip_weight=1", "loss.clip_weight=0", "loss.dino_weight=0",
                  "loss.ibot_weight=0")
    )  # fmt: skip
    total, parts = arch.training_forward(batch(), teacher_temp=0.04)
    torch.testing.assert_close(total.detach(), parts["clip_pooled_loss"])
    total.backward()
    vision = arch.student.vision
    assert vision.patch_embed.proj.weight.grad.abs().sum() > 0
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in arch.student.text.parameters()
    )


def test_head_only_teacher_is_the_student_encoder():
    torch.manual_seed(0)
    arch = TIPSv2MetaArch(small_cfg("ema.mode=head_only"))
    assert arch.teacher_vision is None
    full = TIPSv2MetaArch(small_cfg("ema.mode=full"))
    assert full.teacher_vision is not None
    c_head, c_full = arch.parameter_counts(), full.parameter_counts()
    assert c_full["ema_copies"] == c_head["ema_copies"] + c_head["vision"]


def test_ema_update_moves_teacher_towards_student():
    torch.manual_seed(0)
    arch = TIPSv2MetaArch(small_cfg("ema.mode=full"))
    with torch.no_grad():
        for p in arch.heads.parameters():
            p.add_(1.0)
    t_before = [p.clone() for p, _ in arch.ema_pairs()]
    arch.update_teacher(0.9)
    for (t, s), before in zip(arch.ema_pairs(), t_before, strict=True):
        torch.testing.assert_close(t, 0.9 * before + 0.1 * s)
    arch.update_teacher(1.0)  # momentum 1: frozen
    after = [p.clone() for p, _ in arch.ema_pairs()]
    arch.update_teacher(1.0)
    assert all(torch.equal(a, p) for a, (p, _) in zip(after, arch.ema_pairs(), strict=True))


def test_one_cls_strategy_and_shared_head():
    torch.manual_seed(0)
    arch = TIPSv2MetaArch(small_cfg("data.caption_strategy=alt_only", "heads.shared=true"))
    assert "ibot" not in arch.heads and not arch.two_cls
    _, parts = arch.training_forward(batch(two=False), teacher_temp=0.04)
    assert "clip_cls2_loss" not in parts
    names = list(arch.state_dict())
    assert len(names) == len(set(names))  # nothing aliased (safetensors needs that)


def test_masked_clip_view_and_no_local_crops():
    torch.manual_seed(0)
    arch = TIPSv2MetaArch(small_cfg("loss.clip_view=masked"))
    _, parts = arch.training_forward(batch(m=0), teacher_temp=0.04)
    assert float(parts["dino_loss"]) == 0.0 and torch.isfinite(parts["ibot_loss"])


def test_centres_move_during_training_forward():
    torch.manual_seed(0)
    arch = TIPSv2MetaArch(small_cfg())
    arch.training_forward(batch(), teacher_temp=0.04)
    assert arch.dino_loss.center.abs().sum() > 0 and arch.ibot_loss.center.abs().sum() > 0


def test_b14_parameter_saving_of_head_only_ema():
    """The paper's 42 %: vision encoder + heads maintained, full vs head-only EMA."""
    with torch.device("meta"):
        head = TIPSv2MetaArch(get_recipe("b14")).parameter_counts()
        full = TIPSv2MetaArch(
            apply_overrides(get_recipe("b14"), ["ema.mode=full"])
        ).parameter_counts()
    assert head["vision"] == 86_316_288
    saving = 1 - head["vision_and_heads_maintained"] / full["vision_and_heads_maintained"]
    # Two separate 32k-prototype heads (~14.7M each): the saving is vision / (2 (vision + heads)).
    assert saving == pytest.approx(
        head["vision"] / (2 * (head["vision"] + head["heads"])), rel=1e-9
    )
    assert 0.30 < saving < 0.45


def test_distillation_student_is_random_and_text_can_start_from_the_teacher():
    from tipsv2_core.models.tips import TIPSModel
    from tipsv2_core.train.distill_arch import DistillMetaArch

    torch.manual_seed(0)
    teacher = TIPSModel("nano14")
    cfg = small_cfg("distill.init_text_from_teacher=true", "data.num_local=0")
    arch = DistillMetaArch(cfg, teacher=teacher)
    assert torch.equal(
        arch.student.text.token_embedding.weight, teacher.text.token_embedding.weight
    )
    assert not torch.equal(arch.student.vision.pos_embed, teacher.vision.pos_embed)
    assert not any(k.startswith("_teacher") or k.startswith("teacher") for k in arch.state_dict())
    b = batch(m=0)
    b["masks"][:] = False
    total, parts = arch.training_forward(b, teacher_temp=0.04)
    total.backward()
    assert {"patch_loss", "cls_loss", "clip_loss"} <= set(parts)
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="does not fit"):
        DistillMetaArch(
            small_cfg("distill.init_text_from_teacher=true", "model.variant=ti14"), teacher
        )


def test_distillation_student_can_start_from_the_teacher_vision_encoder():
    from tipsv2_core.models.tips import TIPSModel
    from tipsv2_core.train.distill_arch import DistillMetaArch

    torch.manual_seed(0)
    teacher = TIPSModel("nano14")
    cfg = small_cfg("distill.init_student_from_teacher=true", "data.num_local=0")
    arch = DistillMetaArch(cfg, teacher=teacher)
    for (name, s), t in zip(
        arch.student.vision.state_dict().items(), teacher.vision.state_dict().values(), strict=True
    ):
        assert torch.equal(s, t), name
    # A copy, not a shared tensor: training the student leaves the frozen teacher as it was.
    assert arch.student.vision.pos_embed.data_ptr() != teacher.vision.pos_embed.data_ptr()
    with pytest.raises(ValueError, match="vision encoder .* does not fit"):
        DistillMetaArch(
            small_cfg("distill.init_student_from_teacher=true", "model.variant=ti14"), teacher
        )


def test_a_student_text_tower_starts_from_the_teacher_only_where_it_fits(capsys):
    from tipsv2_core.recipes import get_recipe
    from tipsv2_core.train.distill_arch import text_from_teacher_only_where_it_fits

    same = get_recipe("distill_demo", distill=True)
    assert same.distill.init_text_from_teacher  # the recipe's choice (Tab. 2 row 5)
    text_from_teacher_only_where_it_fits(same, "nano14")
    assert same.distill.init_text_from_teacher and capsys.readouterr().out == ""

    other = get_recipe("distill_demo", distill=True)
    other.model.variant = "ti14"  # a wider text tower than nano14's
    text_from_teacher_only_where_it_fits(other, "nano14")
    assert not other.distill.init_text_from_teacher
    assert "trains from scratch" in capsys.readouterr().out
