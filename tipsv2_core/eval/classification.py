"""Zero-shot classification: nearest class-text embedding (9 TCL templates per class).

Images are resized to `image_size`² (bilinear) and embedded by CLS1 by default (the
method brief's [INF] choice, as in all official demos); class embeddings come from
`tipsv2_core.eval.prompts.class_text_embeddings`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tipsv2_core.eval._common import embed_image_dataset, eval_mode, resolve_device
from tipsv2_core.eval.datasets import ClassDataset
from tipsv2_core.eval.metrics import topk_accuracy
from tipsv2_core.eval.prompts import TCL_TEMPLATES, class_text_embeddings
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.text.tokenizer import Tokenizer


@torch.inference_mode()
def evaluate(
    model: TIPSModel,
    tokenizer: Tokenizer | None,
    dataset: ClassDataset,
    *,
    cls: str = "cls1",
    image_size: int = 448,
    templates: Sequence[str] = TCL_TEMPLATES,
    class_embeddings: torch.Tensor | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """-> {top1, top5} as fractions in [0, 1] (ties count against the sample).

    class_embeddings [C, D] replace the prompt embeddings (then `tokenizer` may be None).
    """
    if not dataset.samples:
        raise ValueError(f"{dataset.name}: no samples")
    dev = resolve_device(model, device)
    with eval_mode(model):
        if class_embeddings is None:
            if tokenizer is None:
                raise ValueError("a tokenizer is needed unless class_embeddings are given")
            class_embeddings = class_text_embeddings(
                model, tokenizer, dataset.class_names, templates
            )
        class_emb = class_embeddings.to(dev).float()
        if class_emb.shape[0] != len(dataset.class_names):
            raise ValueError(
                f"{class_emb.shape[0]} class embeddings for {len(dataset.class_names)} classes"
            )
        image_emb = embed_image_dataset(
            model,
            [s.load_image for s in dataset.samples],
            image_size=image_size,
            cls=cls,
            device=dev,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            desc=f"classification {dataset.name}",
        )
    labels = torch.tensor([s.label for s in dataset.samples], device=dev)
    acc = topk_accuracy(image_emb @ class_emb.T, labels, (1, 5))
    return {"top1": acc[1], "top5": acc[5]}
