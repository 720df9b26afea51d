"""Fast scalar random draws for scene generation.

A scene makes about a hundred scalar draws (attributes, positions, caption templates);
each `Generator` call costs microseconds of overhead, and `Generator.choice` also turns its
argument into an array. `Dice` draws uniforms from the generator in blocks and serves
scalars from the block, deterministically for a given generator state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")
_BLOCK = 64


def cumulative(p: Sequence[float]) -> tuple[float, ...]:
    """Cumulative weights for `Dice.pick_weighted`, normalised to end at 1."""
    c = np.cumsum(np.asarray(p, np.float64))
    return tuple(float(v) for v in c / c[-1])


class Dice:
    """Scalar draws (uniform floats, integers, choices) from a numpy Generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng  # for array draws
        self._block: list[float] = []
        self._next = 0

    def random(self) -> float:
        """A uniform float in [0, 1)."""
        if self._next == len(self._block):
            self._block = self.rng.random(_BLOCK).tolist()
            self._next = 0
        self._next += 1
        return self._block[self._next - 1]

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def integer(self, n: int) -> int:
        """A uniform integer in [0, n)."""
        return min(int(self.random() * n), n - 1)

    def pick(self, options: Sequence[T]) -> T:
        """One element of `options`, uniformly."""
        return options[self.integer(len(options))]

    def pick_weighted(self, options: Sequence[T], cum: Sequence[float]) -> T:
        """One element of `options` with probabilities given as `cumulative(p)`."""
        u = self.random()
        for option, edge in zip(options, cum, strict=True):
            if u < edge:
                return option
        return options[-1]

    def shuffled(self, items: Sequence[T]) -> list[T]:
        """A copy of `items` in random order (Fisher–Yates)."""
        out = list(items)
        for i in range(len(out) - 1, 0, -1):
            j = self.integer(i + 1)
            out[i], out[j] = out[j], out[i]
        return out
