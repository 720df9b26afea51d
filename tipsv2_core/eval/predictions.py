"""Saving zero-shot segmentation predictions: a label PNG and a coloured overlay per image.

Files are named after the input's key: `<key>.png` (uint8 class ids, or uint16 beyond 255
classes) and `<key>_overlay.png` (the image blended with a fixed class palette).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from tipsv2_core.eval.datasets import SegDataset


def palette(num_classes: int) -> np.ndarray:
    """[C, 3] uint8: well-spread, fixed colours (golden-ratio hues)."""
    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 255, np.full(num_classes, 200), np.full(num_classes, 230)], axis=1)
    img = Image.fromarray(hsv.astype(np.uint8)[None], mode="HSV").convert("RGB")
    return np.asarray(img)[0]


class PredictionWriter:
    """`on_prediction(key, pred)` callback for the zero-shot segmentation evaluator."""

    def __init__(self, out_dir: str | os.PathLike, dataset: SegDataset, alpha: float = 0.5) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.images = {s.key: s.load_image for s in dataset.samples}
        self.colours = palette(len(dataset.class_names))
        self.alpha = alpha

    def __call__(self, key: str, pred: np.ndarray) -> None:
        if "/" in key or key.startswith("."):
            raise ValueError(f"unsafe prediction key {key!r}")
        Image.fromarray(pred).save(self.out / f"{key}.png")
        image = np.asarray(self.images[key]().convert("RGB").resize(pred.shape[::-1]), np.float32)
        blend = (1 - self.alpha) * image + self.alpha * self.colours[pred.astype(np.int64)]
        Image.fromarray(blend.astype(np.uint8)).save(self.out / f"{key}_overlay.png")
