"""DINO self-distillation on the CLS token: teacher's global crop -> student's local crops.

L_DINO = -Σ_crops Σ_k p_t(k) log p_s(k) (TIPSv2 Eq. 1), with the teacher distribution
centred (EMA centre, or Sinkhorn-Knopp) and sharpened by a low teacher temperature; the
student uses τ_s = 0.1. The centre is a buffer, so it is saved in checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tipsv2_core.distributed import all_reduce_mean, is_distributed, world_size


def sinkhorn_knopp(logits: torch.Tensor, teacher_temp: float, iterations: int = 3) -> torch.Tensor:
    """Teacher probabilities [B, K] with equal prototype usage (SwAV / DINOv2 centring).

    Alternately normalises the K prototype rows and the B sample columns of
    exp(logits / τ_t); with several workers the sums run over the global batch.
    """
    # No max-subtraction: it would differ between workers. Head logits are cosines in
    # [-1, 1], so exp(logit / τ_t) cannot overflow.
    q = torch.exp(logits.float() / teacher_temp).T  # [K, B]
    b = q.shape[1] * world_size()
    k = q.shape[0]
    total = q.sum()
    if is_distributed():
        total = all_reduce_mean(total) * world_size()
    q = q / total
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if is_distributed():
            rows = all_reduce_mean(rows) * world_size()
        q = q / rows / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T  # columns sum to 1: one distribution per sample


class DINOLoss(nn.Module):
    def __init__(
        self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(
        self, logits: torch.Tensor, teacher_temp: float, centering: str = "center"
    ) -> torch.Tensor:
        """Teacher targets [B, K] from teacher head logits [B, K] (no gradient)."""
        if centering == "sinkhorn":
            return sinkhorn_knopp(logits, teacher_temp)
        if centering != "center":
            raise ValueError(f"unknown centering {centering!r}; expected 'center' or 'sinkhorn'")
        return F.softmax((logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """center ← m·center + (1 − m)·mean(teacher logits) over the (global) batch."""
        batch_mean = all_reduce_mean(teacher_logits.float().mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """student_logits [M, B, K] (M local crops), teacher_probs [B, K] -> mean CE."""
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        return -(teacher_probs[None] * log_p).sum(dim=-1).mean()
