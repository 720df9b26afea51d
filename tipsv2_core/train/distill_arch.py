"""Distillation (TIPSv2 §3.2): a frozen larger teacher, a randomly initialised student
(or, for the paper's Tab. 2 ablation, one initialised from the teacher).

The student sees the global crop (masked at `distill.mask_ratio`, default 0: the paper's
finding is that supervising *all* patch tokens of an unmasked view is what lets students
beat their teachers); the teacher sees it unmasked. Losses:

    L = w_patch·(1 − cos) over all patch tokens + w_cls·(1 − cos) on CLS1 and CLS2
        + w_clip·L_CLIP for the student's text tower (random or teacher-initialised)
"""

from __future__ import annotations

import torch
from torch import nn

from tipsv2_core.config import TrainConfig
from tipsv2_core.errors import CheckpointError
from tipsv2_core.losses import cosine_distill_loss
from tipsv2_core.models.io import load_model
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.models.variants import get_variant
from tipsv2_core.train.meta_arch import TEMPERATURE_RANGE, clip_terms, uses_cls2


class DistillMetaArch(nn.Module):
    def __init__(self, cfg: TrainConfig, teacher: TIPSModel | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if teacher is None:
            if not cfg.distill.teacher:
                raise ValueError(
                    "distill.teacher is empty: give the teacher checkpoint (--teacher)"
                )
            teacher = load_model(cfg.distill.teacher, cfg.distill.teacher_variant)
        teacher.eval().requires_grad_(False)
        # Kept outside the module tree: the frozen teacher is not part of the run's state
        # (it is reloaded from its own checkpoint on resume) and gets no optimiser.
        self._teacher = (teacher,)
        self.student = TIPSModel(cfg.model.variant, pos_grid=cfg.model.pos_grid)  # random init
        with torch.no_grad():
            self.student.temperature.fill_(cfg.model.init_temperature)
        if cfg.distill.init_text_from_teacher:
            if teacher.text.cfg != self.student.text.cfg:
                raise CheckpointError(
                    f"distill.init_text_from_teacher: the teacher's text tower "
                    f"({teacher.variant.name}) does not fit the student's "
                    f"({self.student.variant.name})"
                )
            self.student.text.load_state_dict(teacher.text.state_dict())
        if cfg.distill.init_student_from_teacher:
            if teacher.vision.cfg != self.student.vision.cfg:
                raise CheckpointError(
                    f"distill.init_student_from_teacher: the teacher's vision encoder "
                    f"({teacher.variant.name}) does not fit the student's "
                    f"({self.student.variant.name})"
                )
            self.student.vision.load_state_dict(teacher.vision.state_dict())
        ds, dt = self.student.vision.embed_dim, teacher.vision.embed_dim
        self.heads = nn.ModuleDict({"patch": nn.Linear(ds, dt), "cls": nn.Linear(ds, dt)})
        self.two_cls = uses_cls2(cfg)

    @property
    def teacher(self) -> TIPSModel:
        return self._teacher[0]

    def _apply(self, fn, recurse: bool = True):  # move the teacher with .to(device)
        super()._apply(fn, recurse)
        self._teacher[0]._apply(fn)
        return self

    def train(self, mode: bool = True) -> DistillMetaArch:
        super().train(mode)
        self.teacher.eval()  # frozen, always in eval mode
        return self

    def trainable_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"student": self.student, "heads": self.heads})

    def parameter_counts(self) -> dict[str, int]:
        n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {
            "student_vision": n(self.student.vision),
            "student_text": n(self.student.text),
            "projectors": n(self.heads),
            "teacher_frozen": n(self.teacher.vision),
        }

    def training_forward(
        self, batch: dict[str, torch.Tensor], teacher_temp: float, ssl_scale: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        del teacher_temp, ssl_scale  # no prototype distributions in feature distillation
        g, masks = batch["global_crops"], batch["masks"]
        with torch.no_grad():
            t = self.teacher.vision(g)
        s = self.student.vision(g, masks=masks if bool(masks.any()) else None)
        proj_cls = self.heads["cls"]
        losses = {
            "patch_loss": cosine_distill_loss(self.heads["patch"](s.patch_tokens), t.patch_tokens),
            "cls_loss": 0.5
            * (
                cosine_distill_loss(proj_cls(s.cls1), t.cls1)
                + cosine_distill_loss(proj_cls(s.cls2), t.cls2)
            ),
        }
        losses |= clip_terms(self.student, s, batch, self.two_cls)
        w = self.cfg.distill
        total = (
            w.patch_weight * losses["patch_loss"]
            + w.cls_weight * losses["cls_loss"]
            + w.clip_weight * losses["clip_loss"]
        )
        return total, {k: v.detach() for k, v in losses.items()}

    def update_teacher(self, momentum: float) -> None:
        """The distillation teacher is frozen: nothing to update."""

    @torch.no_grad()
    def after_step(self) -> None:
        self.student.temperature.clamp_(*TEMPERATURE_RANGE)


def text_from_teacher_only_where_it_fits(cfg: TrainConfig, teacher_variant: str) -> None:
    """The distillation recipe starts the student's text tower from the teacher's (the
    paper's Tab. 2 row 5); a student of another size has a text tower of another shape,
    which then trains from scratch instead of failing the run (an explicit
    `distill.init_text_from_teacher=true` set after this still fails, in DistillMetaArch)."""
    student = cfg.model.variant
    if cfg.distill.init_text_from_teacher and (
        get_variant(student).text != get_variant(teacher_variant).text
    ):
        cfg.distill.init_text_from_teacher = False
        print(
            f"distill: the {teacher_variant} teacher's text tower does not fit {student}'s; "
            "the student's text tower trains from scratch",
            flush=True,
        )
