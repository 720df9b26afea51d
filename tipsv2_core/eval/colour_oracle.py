"""The colour-only oracle: segmentation from a pixel's colour alone, as a leak detector.

A dense score means something only if the labels cannot be read off a cheaper cue. This
oracle learns, on the training split, the most frequent label of every colour (RGB
quantised to `bins` levels per channel) and labels each evaluation pixel with its
colour's label. If it scores close to a trained model, the classes leak through colour
and the model's score says nothing about shape or texture. Colours never seen in
training fall back to the most frequent label overall.
"""

from __future__ import annotations

import numpy as np

from tipsv2_core.eval.datasets import IGNORE_INDEX, SegDataset
from tipsv2_core.eval.metrics import miou, new_confusion, pixel_accuracy, update_confusion


def _codes(image: np.ndarray, bins: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [H, W] int64 colour code in [0, bins³)."""
    q = (image.astype(np.int64) * bins) >> 8
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def _arrays(sample, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image [H, W, 3] uint8, label [H, W] int64) of a sample, at the label's size."""
    label = np.asarray(sample.load_label()).astype(np.int64)
    img = sample.load_image().convert("RGB")
    if img.size != (label.shape[1], label.shape[0]):
        img = img.resize((label.shape[1], label.shape[0]))
    return np.asarray(img), label


def fit(train: SegDataset, bins: int = 16) -> np.ndarray:
    """[bins³] int64: the most frequent label of each colour code on `train`."""
    c = len(train.class_names)
    counts = np.zeros((bins**3, c), np.int64)
    for sample in train:
        image, label = _arrays(sample)
        keep = (label != IGNORE_INDEX) & (label < c)
        flat = _codes(image, bins)[keep] * c + label[keep]
        counts += np.bincount(flat, minlength=counts.size).reshape(counts.shape)
    table = counts.argmax(1)
    table[counts.sum(1) == 0] = int(counts.sum(0).argmax())
    return table


def evaluate(train: SegDataset, dataset: SegDataset, bins: int = 16) -> dict[str, float]:
    """mIoU and pixel accuracy of the colour-only oracle fitted on `train`, on `dataset`."""
    if list(train.class_names) != list(dataset.class_names):
        raise ValueError(
            f"colour oracle: {train.name} and {dataset.name} have different class lists"
        )
    table = fit(train, bins)
    conf = new_confusion(len(dataset.class_names))
    for sample in dataset:
        image, label = _arrays(sample)
        update_confusion(conf, table[_codes(image, bins)], label)
    mean, _ = miou(conf)
    return {"miou": mean, "pixel_acc": pixel_accuracy(conf)}
