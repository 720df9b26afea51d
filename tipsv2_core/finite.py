"""Non-finite outputs are an error, never a number.

A model with NaN (or inf) weights produces NaN embeddings and scores, and comparisons
with NaN are all false: a rank counted with `>=` becomes 0 and retrieval reports a
perfect R@1. Every command and evaluator checks its model outputs here before using them.
"""

from __future__ import annotations

import numpy as np
import torch


class NonFiniteError(ValueError):
    """A model output holds NaN or inf values."""


def check_finite(values: torch.Tensor | np.ndarray, what: str) -> None:
    """Raises NonFiniteError naming `what` when any element of `values` is NaN or inf."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "fc":
            return
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        total = values.size
    else:
        if not (values.is_floating_point() or values.is_complex()):
            return
        bad = int((~torch.isfinite(values)).sum())
        total = values.numel()
    if bad:
        raise NonFiniteError(
            f"{what}: {bad} of {total} values are NaN or inf; the model's weights (or its "
            "inputs) are broken, so no result is reported"
        )
