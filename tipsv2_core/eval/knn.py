"""kNN classification on frozen CLS features (DINO's weighted kNN, k=20, T=0.07).

The training ClassDataset is the memory bank; the evaluated dataset is the query set.
Both must use the same class list. Images are resized to `image_size`² (bilinear).
"""

from __future__ import annotations

import torch

from tipsv2_core.eval._common import embed_image_dataset, eval_mode, resolve_device
from tipsv2_core.eval.datasets import ClassDataset
from tipsv2_core.eval.metrics import knn_scores, topk_accuracy
from tipsv2_core.models.tips import TIPSModel


@torch.inference_mode()
def evaluate(
    model: TIPSModel,
    tokenizer: object | None,
    dataset: ClassDataset,
    *,
    train: ClassDataset,
    k: int = 20,
    temperature: float = 0.07,
    cls: str = "cls1",
    image_size: int = 448,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """-> {top1, top5} of `dataset` classified by its neighbours in `train`.

    `tokenizer` is unused (the common evaluator signature).
    """
    del tokenizer
    if list(train.class_names) != list(dataset.class_names):
        only = sorted(set(train.class_names) ^ set(dataset.class_names))
        raise ValueError(
            f"{train.name} and {dataset.name} have different class lists "
            f"({len(train.class_names)} vs {len(dataset.class_names)}; in one only: {only[:5]})"
        )
    if not train.samples or not dataset.samples:
        raise ValueError("both the memory bank and the query set need samples")
    dev = resolve_device(model, device)
    opts = dict(
        image_size=image_size,
        cls=cls,
        device=dev,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    with eval_mode(model):
        bank = embed_image_dataset(
            model, [s.load_image for s in train.samples], desc=f"knn bank {train.name}", **opts
        )
        queries = embed_image_dataset(
            model, [s.load_image for s in dataset.samples], desc=f"knn {dataset.name}", **opts
        )
    bank_labels = torch.tensor([s.label for s in train.samples], device=dev)
    labels = torch.tensor([s.label for s in dataset.samples], device=dev)
    votes = knn_scores(bank, bank_labels, queries, len(dataset.class_names), k, temperature)
    acc = topk_accuracy(votes, labels, (1, 5))
    return {"top1": acc[1], "top5": acc[5]}
