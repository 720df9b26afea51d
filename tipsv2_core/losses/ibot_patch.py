"""Patch-level self-distillation: iBOT (masked patches only) and TIPSv2's iBOT++ (all patches).

The student sees the masked global crop, the teacher the unmasked one. iBOT (Eq. 2) sums
the cross-entropy over masked patches only; iBOT++ (Eq. 3) removes the mask indicator, so
visible patches are anchored to the teacher too. Both normalise per image — by the masked
count (iBOT) or by all N patches (iBOT++, one uniform mean) — then average over images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tipsv2_core.losses.dino_cls import DINOLoss

MODES = ("ibot", "ibot++")


class iBOTPatchLoss(DINOLoss):
    """Same centring and sharpening as DINO, applied per patch token."""

    def __init__(
        self,
        out_dim: int,
        mode: str = "ibot++",
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown patch loss mode {mode!r}; expected one of {MODES}")
        super().__init__(out_dim, student_temp, center_momentum)
        self.mode = mode

    def per_patch(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every patch: [B, N, K] × [B, N, K] -> [B, N]."""
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        return -(teacher_probs * log_p).sum(dim=-1)

    def forward(  # type: ignore[override]
        self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """student_logits, teacher_probs [B, N, K]; masks [B, N] bool (True = masked)."""
        ce = self.per_patch(student_logits, teacher_probs)  # [B, N]
        if self.mode == "ibot++":
            return ce.mean()
        m = masks.to(ce.dtype)
        per_image = (ce * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return per_image.mean()
