"""The common evaluator protocol: a model in, named metrics out.

Every evaluator has a `name` and `run(model, tokenizer, dataset, **options) -> metrics`
with plain float metrics (`miou`, `i2t_r@1`, …). `namespaced` turns them into the
project's metric names, `eval/<task>/<dataset>/<metric>`.

Options shared by all evaluators: `device` (the model is moved there; default: where it
is), `progress` (tqdm bar), `num_workers` (image-loading threads), `batch_size`.
Evaluator-specific ones: see each module's `evaluate`. kNN and the linear probe take the
training split as `train=`. Zero-shot segmentation takes `on_prediction(key, pred)` to
receive each predicted label map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tipsv2_core.eval import classification, knn, linear_seg, retrieval, zeroshot_seg
from tipsv2_core.eval.datasets import CaptionDataset, ClassDataset, SegDataset
from tipsv2_core.models.tips import TIPSModel

Dataset = SegDataset | CaptionDataset | ClassDataset


@runtime_checkable
class Evaluator(Protocol):
    name: str

    def run(
        self, model: TIPSModel, tokenizer: Any, dataset: Any, **options: Any
    ) -> dict[str, float]: ...


@dataclass(frozen=True)
class FunctionEvaluator:
    """An evaluator backed by a module's `evaluate(model, tokenizer, dataset, **options)`."""

    name: str
    fn: Callable[..., dict[str, float]]
    dataset_type: type
    needs_tokenizer: bool

    def run(
        self, model: TIPSModel, tokenizer: Any, dataset: Any, **options: Any
    ) -> dict[str, float]:
        if not isinstance(dataset, self.dataset_type):
            raise TypeError(
                f"{self.name} evaluates a {self.dataset_type.__name__}, "
                f"got {type(dataset).__name__}"
            )
        return self.fn(model, tokenizer, dataset, **options)


EVALUATORS: dict[str, FunctionEvaluator] = {
    e.name: e
    for e in (
        FunctionEvaluator("zeroshot_seg", zeroshot_seg.evaluate, SegDataset, True),
        FunctionEvaluator("retrieval", retrieval.evaluate, CaptionDataset, True),
        FunctionEvaluator("classification", classification.evaluate, ClassDataset, True),
        FunctionEvaluator("knn", knn.evaluate, ClassDataset, False),
        FunctionEvaluator("linear_seg", linear_seg.evaluate, SegDataset, False),
    )
}


def get_evaluator(task: str) -> FunctionEvaluator:
    if task not in EVALUATORS:
        raise ValueError(f"unknown evaluator {task!r}; choose one of: {', '.join(EVALUATORS)}")
    return EVALUATORS[task]


def namespaced(task: str, dataset_name: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """{"miou": x} -> {"eval/<task>/<dataset>/miou": x}."""
    for part, what in ((task, "task"), (dataset_name, "dataset name")):
        if not part or "/" in part:
            raise ValueError(f"{what} {part!r} must be non-empty and contain no '/'")
    return {f"eval/{task}/{dataset_name}/{k}": float(v) for k, v in metrics.items()}


def run_evaluation(
    task: str, model: TIPSModel, tokenizer: Any, dataset: Dataset, **options: Any
) -> dict[str, float]:
    """Runs one evaluator and returns its metrics under their namespaced names."""
    metrics = get_evaluator(task).run(model, tokenizer, dataset, **options)
    return namespaced(task, dataset.name, metrics)
