"""Schedules as pure functions of the step, so resuming needs nothing but the step number."""

from __future__ import annotations

import math


def cosine(start: float, end: float, step: int, total: int) -> float:
    """Half-cosine from `start` (step 0) to `end` (step `total`), constant afterwards."""
    if total <= 0 or step >= total:
        return end
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / total))


def warmup_cosine(peak: float, floor: float, warmup: int, step: int, total: int) -> float:
    """Linear warm-up from 0 to `peak` over `warmup` steps, then cosine down to `floor`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine(peak, floor, step - warmup, total - warmup)


def linear_warmup(start: float, end: float, step: int, warmup: int) -> float:
    """From `start` to `end` linearly over `warmup` steps (the teacher temperature)."""
    if step >= warmup or warmup <= 0:
        return end
    return start + (end - start) * step / warmup
