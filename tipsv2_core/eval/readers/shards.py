"""Our own shard datasets (synthetic or curated) as segmentation, retrieval and
classification datasets for the evaluators.

- Segmentation: the `.mask.png` label maps. Without `background=True`, label 0
  (background) becomes ignore and classes shift down by one, as PC59 / ADE150 do.
- Retrieval: each image with the caption `field` (alt_text, caption_medium, caption_long).
- Classification: the class covering most labelled pixels of each image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tipsv2_core.data.shards import iter_samples, open_dataset
from tipsv2_core.eval.datasets import (
    IGNORE_INDEX,
    CaptionDataset,
    CaptionSample,
    ClassDataset,
    ClassSample,
    SegDataset,
    SegSample,
)

CAPTION_FIELDS = ("alt_text", "caption_medium", "caption_long")


@dataclass
class ShardEvalDatasets:
    seg: SegDataset
    captions: CaptionDataset
    classes: ClassDataset


def _const(value):
    return lambda: value


def remap_labels(mask: np.ndarray, background: bool) -> np.ndarray:
    """A shard's label map [H, W] as the evaluators read it: with `background`, as is;
    without, background (0) ignored and the classes shifted down by one (PC59/ADE150)."""
    label = mask.astype(np.int64)
    if not background:
        ignore = (label == 0) | (label == IGNORE_INDEX)
        label = np.where(ignore, IGNORE_INDEX, label - 1)
    return label


def shard_eval_datasets(
    path: str | os.PathLike,
    split: str = "val",
    *,
    field: str = "caption_medium",
    background: bool = False,
    name: str | None = None,
    limit: int | None = None,
) -> ShardEvalDatasets:
    """The three evaluation views of one split of a shard dataset (held in memory)."""
    if field not in CAPTION_FIELDS:
        raise ValueError(f"caption field {field!r}: one of {CAPTION_FIELDS}")
    info = open_dataset(path)
    names = info.class_names
    classes = names if background else names[1:]
    # The dataset's own name (its card's), not the folder a pipeline happens to store it in.
    label_name = name or f"{info.card.get('name') or info.path.name}-{split}"
    seg, caps, cls = [], [], []
    for sample in iter_samples(path, split):
        if limit is not None and len(seg) >= limit:
            break
        if sample.mask is None:
            raise ValueError(f"{info.path}: sample {sample.key!r} has no label map (.mask.png)")
        image: Image.Image = sample.image
        label = remap_labels(sample.mask, background)
        seg.append(SegSample(sample.key, _const(image), _const(label)))
        text = sample.meta.get(field)
        if not isinstance(text, str):
            raise ValueError(f"{info.path}: sample {sample.key!r} has no {field!r}")
        caps.append(CaptionSample(sample.key, _const(image), [text]))
        counts = np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=len(classes))
        if counts.sum() > 0:
            cls.append(ClassSample(sample.key, _const(image), int(counts.argmax())))
    if not seg:
        raise ValueError(f"{info.path}: split {split!r} has no samples")
    return ShardEvalDatasets(
        seg=SegDataset(label_name, list(classes), seg),
        captions=CaptionDataset(label_name, caps),
        classes=ClassDataset(label_name, list(classes), cls),
    )
