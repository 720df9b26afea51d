"""Feature distillation from a frozen teacher: 1 − cos between projected student and teacher.

The official release ships encoders without the self-distillation heads, so a released
teacher cannot provide prototype distributions; we distil in feature space instead. The
student's tokens are mapped to the teacher width by a trainable linear projector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """student, teacher: [..., D] (same shape) -> mean over tokens of 1 − cos(s, t).

    weights: optional [...] token weights (e.g. a patch mask); the mean is weighted.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ"
        )
    dist = 1.0 - F.cosine_similarity(student.float(), teacher.float().detach(), dim=-1)
    if weights is None:
        return dist.mean()
    w = weights.to(dist.dtype)
    return (dist * w).sum() / w.sum().clamp_min(1.0)
