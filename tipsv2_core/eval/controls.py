"""Controls that say what a trained model's score is worth.

- `random_init_metrics`: the same evaluations on a randomly initialised encoder of the
  same variant, with the trained run's tokenizer: the floor that training must clear.
- `colour_oracle_miou` (colour_oracle.py): segmentation from pixel colour alone, fitted on
  the training split: a high score means the labels leak through colour.

The supervised upper bound is the linear probe on frozen patch tokens (`linear_seg`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tipsv2_core.eval import colour_oracle
from tipsv2_core.eval.datasets import SegDataset
from tipsv2_core.eval.protocol import run_evaluation
from tipsv2_core.eval.readers.resolve import EvalViews
from tipsv2_core.models.tips import TIPSModel


def random_init_model(variant: str, seed: int = 0) -> TIPSModel:
    """A freshly initialised model of `variant` (the same one for the same seed)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TIPSModel(variant).eval()


def random_init_metrics(
    variant: str,
    tokenizer: Any,
    views: EvalViews,
    tasks: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    seed: int = 0,
) -> dict[str, float]:
    """Namespaced metrics of a random-init `variant` on `views`; options[task] are the
    evaluator options the trained model was scored with."""
    model = random_init_model(variant, seed)
    metrics: dict[str, float] = {}
    for task in tasks:
        view = views.view_for(task, "eval")
        metrics |= run_evaluation(task, model, tokenizer, view, progress=False, **options[task])
    return metrics


def colour_oracle_miou(train: SegDataset, dataset: SegDataset) -> dict[str, float]:
    """{eval/colour_oracle/<dataset>/miou, …/pixel_acc}: the colour-only oracle's scores."""
    scores = colour_oracle.evaluate(train, dataset)
    return {f"eval/colour_oracle/{dataset.name}/{k}": v for k, v in scores.items()}
