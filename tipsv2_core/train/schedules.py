"""Schedules as pure functions of the step, so resuming needs nothing but the step number."""

from __future__ import annotations

import math


def cosine(start: float, end: float, step: int, total: int) -> float:
    """Half-cosine from `start` (step 0) to `end` (step `total`), constant afterwards."""
    if total <= 0 or step >= total:
        return end
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / total))


def warmup_stable_decay(
    peak: float, floor: float, warmup: int, decay: int, step: int, total: int
) -> float:
    """Linear warm-up to `peak` over `warmup` steps, `peak` held, then a half-cosine down
    to `floor` over the last `decay` steps (warm-up / stable / decay, Hu et al. 2024).

    With `decay >= total - warmup` the decay starts right after the warm-up (the usual
    warm-up + cosine). A short decay at the end keeps the rate high while the model still
    learns and still ends on a small rate, so the final weights are not one noisy sample
    of a constant-rate trajectory.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    decay = min(decay, total - warmup)
    return cosine(peak, floor, step - (total - decay), decay) if step >= total - decay else peak


def linear_warmup(start: float, end: float, step: int, warmup: int) -> float:
    """From `start` to `end` linearly over `warmup` steps (the teacher temperature)."""
    if step >= warmup or warmup <= 0:
        return end
    return start + (end - start) * step / warmup
