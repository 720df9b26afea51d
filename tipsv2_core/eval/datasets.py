"""What evaluators consume: three small dataset types, filled by the readers in `readers/`.

Images are loaded lazily (a callable per sample) so a reader can index a large folder
without decoding it. Label maps use 255 for "ignore".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

IGNORE_INDEX = 255


@dataclass
class SegSample:
    key: str  # file stem of the input image; predictions are saved under the same stem
    load_image: Callable[[], Image.Image]  # -> RGB
    load_label: Callable[[], np.ndarray]  # -> [H, W] int64 class index (0..C-1) or IGNORE_INDEX


@dataclass
class SegDataset:
    """Semantic segmentation: C class names, label maps indexing them.

    `class_names[i]` is the name of label i. Whether a "background" class is among them is
    the dataset's choice (PC60 keeps it, PC59 and ADE150 do not; VOC21 does).
    """

    name: str
    class_names: list[str]
    samples: list[SegSample]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[SegSample]:
        return iter(self.samples)


@dataclass
class CaptionSample:
    key: str
    load_image: Callable[[], Image.Image]
    captions: list[str]  # one or more (COCO: 5, Flickr30k: 5)


@dataclass
class CaptionDataset:
    """Image-text retrieval: an image counts as retrieved if any of its captions is."""

    name: str
    samples: list[CaptionSample]

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class ClassSample:
    key: str
    load_image: Callable[[], Image.Image]
    label: int


@dataclass
class ClassDataset:
    """Classification: images with one label each (zero-shot, kNN)."""

    name: str
    class_names: list[str]
    samples: list[ClassSample]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)
