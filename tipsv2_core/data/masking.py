"""Patch masks for the student's global crop (iBOT / iBOT++): random or block-wise.

Both modes mask exactly round(ratio × N) of the N patches, so every image in a batch has
the same number of masked tokens and the loss normalisation does not depend on luck.
"""

from __future__ import annotations

import math

import numpy as np


def random_mask(h: int, w: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """[h*w] bool, True = masked, exactly round(ratio*h*w) patches chosen uniformly."""
    n = h * w
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: round(ratio * n)]] = True
    return mask


def block_mask(
    h: int,
    w: int,
    ratio: float,
    rng: np.random.Generator,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    max_tries: int = 50,
) -> np.ndarray:
    """[h*w] bool: BEiT-style rectangles of patches, then topped up or trimmed to the target.

    Rectangles of random area (≥ min_block patches) and aspect ratio are added until the
    target count is reached; the last few patches are added or removed at random so the
    count is exact.
    """
    n, target = h * w, round(ratio * h * w)
    grid = np.zeros((h, w), dtype=bool)
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    tries = 0
    while grid.sum() < target and tries < max_tries:
        tries += 1
        budget = target - int(grid.sum())
        area = rng.uniform(min_block, max(min_block, budget))
        ar = math.exp(rng.uniform(log_lo, log_hi))
        bh = min(h, max(1, round(math.sqrt(area * ar))))
        bw = min(w, max(1, round(math.sqrt(area / ar))))
        top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        grid[top : top + bh, left : left + bw] = True
    flat = grid.reshape(n)
    count = int(flat.sum())
    if count > target:  # trim: unmask random masked patches
        flat[rng.choice(np.flatnonzero(flat), count - target, replace=False)] = False
    elif count < target:  # top up with random visible patches
        flat[rng.choice(np.flatnonzero(~flat), target - count, replace=False)] = True
    return flat


def make_mask(h: int, w: int, ratio: float, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Dispatches on mode: "random" or "block"."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio {ratio} must be in [0, 1)")
    if mode == "random":
        return random_mask(h, w, ratio, rng)
    if mode == "block":
        return block_mask(h, w, ratio, rng)
    raise ValueError(f"unknown mask mode {mode!r}; expected 'random' or 'block'")
