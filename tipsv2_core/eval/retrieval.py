"""Image-text retrieval: recall@K in both directions with several captions per image.

Images are resized to `image_size`² (bilinear, as `tipsv2_core.inference`), embedded by
their CLS1 (default; contrasted with alt-text in training) or CLS2 token; every caption
is embedded by the text tower. Image→text: an image is retrieved within K when ANY of its
captions is in the top K. Text→image: each caption must retrieve its own image.
"""

from __future__ import annotations

import torch

from tipsv2_core.eval._common import (
    embed_image_dataset,
    embed_texts,
    eval_mode,
    resolve_device,
)
from tipsv2_core.eval.datasets import CaptionDataset
from tipsv2_core.eval.metrics import retrieval_recalls
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.text.tokenizer import Tokenizer

KS = (1, 5, 10)


@torch.inference_mode()
def evaluate(
    model: TIPSModel,
    tokenizer: Tokenizer,
    dataset: CaptionDataset,
    *,
    cls: str = "cls1",
    image_size: int = 448,
    batch_size: int = 32,
    text_batch_size: int = 256,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """-> {i2t_r@1, i2t_r@5, i2t_r@10, t2i_r@1, t2i_r@5, t2i_r@10} as fractions in [0, 1].

    Ties count against the query (see `tipsv2_core.eval.metrics`).
    """
    empty = [s.key for s in dataset.samples if not s.captions]
    if empty:
        raise ValueError(f"{dataset.name}: {len(empty)} image(s) without captions, e.g. {empty[0]}")
    if not dataset.samples:
        raise ValueError(f"{dataset.name}: no samples")
    dev = resolve_device(model, device)
    texts = [c for s in dataset.samples for c in s.captions]
    text_to_image = torch.tensor(
        [i for i, s in enumerate(dataset.samples) for _ in s.captions], device=dev
    )
    with eval_mode(model):
        image_emb = embed_image_dataset(
            model,
            [s.load_image for s in dataset.samples],
            image_size=image_size,
            cls=cls,
            device=dev,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            desc=f"retrieval {dataset.name}",
        )
        text_emb = embed_texts(model, tokenizer, texts, dev, text_batch_size)
    return retrieval_recalls(image_emb, text_emb, text_to_image, KS)
