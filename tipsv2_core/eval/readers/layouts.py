"""Standard dataset layouts as evaluation datasets. A malformed dataset is an error that
names the file and the problem; images are decoded lazily.

- Pascal VOC: `JPEGImages/`, `SegmentationClass/` (palette PNGs),
  `ImageSets/Segmentation/<split>.txt`
- ADE20K: `images/<split>/`, `annotations/<split>/`; 150 classes, label 0 ignored
- generic segmentation: `images/`, `masks/` (same stems), `classes.txt` (one name per line)
- COCO-style caption JSON: `{"images": [{id, file_name}], "annotations": [{image_id, caption}]}`
- image folder per class: `<root>/<class name>/<image>`
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tipsv2_core.eval.datasets import (
    IGNORE_INDEX,
    CaptionDataset,
    CaptionSample,
    ClassDataset,
    ClassSample,
    SegDataset,
    SegSample,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant",
    "sheep", "sofa", "train", "tv monitor",
)  # fmt: skip


class DatasetFormatError(ValueError):
    """A dataset on disk does not follow its layout."""


def _image_loader(path: Path):
    def load() -> Image.Image:
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetFormatError(f"{path}: cannot read image ({e})") from None

    return load


def _label_loader(path: Path, shift: int = 0, ignore_zero: bool = False):
    def load() -> np.ndarray:
        try:
            with Image.open(path) as img:
                if img.mode not in ("P", "L", "I;16", "I"):
                    raise DatasetFormatError(
                        f"{path}: label map has mode {img.mode}, expected P or L"
                    )
                label = np.asarray(img).astype(np.int64)
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetFormatError(f"{path}: cannot read label map ({e})") from None
        if ignore_zero:
            label = np.where((label == 0) | (label == IGNORE_INDEX), IGNORE_INDEX, label + shift)
        return label

    return load


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetFormatError(f"{path}: missing {what}")
    return path


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def read_voc(root: str | os.PathLike, split: str = "val") -> SegDataset:
    """VOC21 (background included); boundary pixels (255) are ignored."""
    root = Path(root)
    ids_file = _require(root / "ImageSets" / "Segmentation" / f"{split}.txt", "split list")
    samples = []
    for line_no, line in enumerate(ids_file.read_text().splitlines(), 1):
        stem = line.strip()
        if not stem:
            continue
        image = root / "JPEGImages" / f"{stem}.jpg"
        label = root / "SegmentationClass" / f"{stem}.png"
        for p, what in ((image, "image"), (label, "label map")):
            if not p.is_file():
                raise DatasetFormatError(f"{ids_file}:{line_no}: {what} {p.name} not found")
        samples.append(SegSample(stem, _image_loader(image), _label_loader(label)))
    return SegDataset(f"voc-{split}", list(VOC_CLASSES), samples)


def read_ade20k(root: str | os.PathLike, split: str = "validation") -> SegDataset:
    """ADE20K (150 classes): label 0 is "other" and ignored, labels 1..150 -> 0..149."""
    from tipsv2_core.eval.readers.ade_classes import ADE20K_CLASSES

    root = Path(root)
    images = _images(_require(root / "images" / split, "images folder"))
    ann_dir = _require(root / "annotations" / split, "annotations folder")
    samples = []
    for stem, image in images.items():
        label = ann_dir / f"{stem}.png"
        if not label.is_file():
            raise DatasetFormatError(f"{label}: annotation for {image.name} not found")
        samples.append(SegSample(stem, _image_loader(image), _label_loader(label, -1, True)))
    return SegDataset(f"ade20k-{split}", list(ADE20K_CLASSES), samples)


def read_generic_seg(root: str | os.PathLike, name: str | None = None) -> SegDataset:
    """`images/`, `masks/` (`<stem>.png`, values = line index in classes.txt, 255 ignore)."""
    root = Path(root)
    classes_file = _require(root / "classes.txt", "classes.txt")
    classes = [c.strip() for c in classes_file.read_text().splitlines() if c.strip()]
    if not classes:
        raise DatasetFormatError(f"{classes_file}: no class names")
    images = _images(_require(root / "images", "images folder"))
    masks = _require(root / "masks", "masks folder")
    samples = []
    for stem, image in images.items():
        mask = masks / f"{stem}.png"
        if not mask.is_file():
            raise DatasetFormatError(f"{mask}: mask for {image.name} not found")
        samples.append(SegSample(stem, _image_loader(image), _label_loader(mask)))
    return SegDataset(name or root.name, classes, samples)


def read_coco_captions(
    annotations: str | os.PathLike, image_root: str | os.PathLike, name: str | None = None
) -> CaptionDataset:
    """Several captions per image, from a COCO-style caption JSON."""
    path, image_root = Path(annotations), Path(image_root)
    try:
        doc = json.loads(path.read_text())
        images = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        anns = [(int(a["image_id"]), str(a["caption"])) for a in doc["annotations"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetFormatError(
            f"{path}: not a COCO caption file ({type(e).__name__}: {e})"
        ) from None
    captions: dict[int, list[str]] = {}
    for image_id, caption in anns:
        if image_id not in images:
            raise DatasetFormatError(f"{path}: caption for unknown image_id {image_id}")
        captions.setdefault(image_id, []).append(caption)
    samples = []
    for image_id, file_name in images.items():
        if image_id not in captions:
            continue
        file = image_root / file_name
        if not file.is_file():
            raise DatasetFormatError(f"{path}: image {file_name} not found under {image_root}")
        samples.append(CaptionSample(Path(file_name).stem, _image_loader(file), captions[image_id]))
    return CaptionDataset(name or path.stem, samples)


def read_image_folder(root: str | os.PathLike, name: str | None = None) -> ClassDataset:
    """`<root>/<class name>/<image>`: classes are the sorted sub-folder names."""
    root = Path(root)
    classes = sorted(p.name for p in _require(root, "folder").iterdir() if p.is_dir())
    if not classes:
        raise DatasetFormatError(f"{root}: no class sub-folders")
    samples = [
        ClassSample(f"{c}-{p.stem}", _image_loader(p), i)
        for i, c in enumerate(classes)
        for p in _images(root / c).values()
    ]
    names = [c.replace("_", " ") for c in classes]
    return ClassDataset(name or root.name, names, samples)
