"""The learning-rate schedule: warm-up, a held peak, a cosine decay over the last steps."""

from __future__ import annotations

import itertools
import math

import pytest

from tipsv2_core.config import apply_overrides, validate
from tipsv2_core.recipes import get_recipe
from tipsv2_core.train.schedules import warmup_stable_decay

PEAK, FLOOR, WARMUP, TOTAL = 1e-3, 1e-5, 10, 100


def test_a_decay_over_every_step_after_the_warm_up_is_the_warm_up_cosine():
    for step in range(WARMUP, TOTAL):
        t = (step - WARMUP) / (TOTAL - WARMUP)
        expected = FLOOR + 0.5 * (PEAK - FLOOR) * (1 + math.cos(math.pi * t))
        assert warmup_stable_decay(PEAK, FLOOR, WARMUP, TOTAL, step, TOTAL) == pytest.approx(
            expected, rel=1e-12
        )


def test_the_rate_is_held_until_the_decay_then_falls_to_the_floor():
    lrs = [warmup_stable_decay(PEAK, FLOOR, WARMUP, 20, s, TOTAL) for s in range(TOTAL)]
    assert lrs[0] == pytest.approx(PEAK / WARMUP)  # warm-up starts above zero
    assert all(lr == PEAK for lr in lrs[WARMUP:80])  # stable until the last 20 steps
    decay = lrs[80:]
    assert all(a > b for a, b in itertools.pairwise(decay))  # strictly falling
    assert FLOOR < decay[-1] < FLOOR + 0.01 * (PEAK - FLOOR)  # within 1 % of the floor
    # After the schedule ends (a longer resumed run asks past `total`) it stays at the floor.
    assert warmup_stable_decay(PEAK, FLOOR, WARMUP, 20, TOTAL + 5, TOTAL) == FLOOR


def test_no_decay_keeps_the_peak_to_the_end():
    assert warmup_stable_decay(PEAK, FLOOR, WARMUP, 0, TOTAL - 1, TOTAL) == PEAK


def test_decay_frac_is_validated_as_a_fraction():
    with pytest.raises(ValueError, match="optim.decay_frac"):
        validate(apply_overrides(get_recipe("demo"), ["optim.decay_frac=1.5"]))
