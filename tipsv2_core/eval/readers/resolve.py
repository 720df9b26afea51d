"""One entry point for every dataset layout: a path in, the evaluation views it offers out.

A layout offers some of three views: segmentation (`seg`), retrieval (`captions`) and
classification (`classes`). Our shards offer all three; VOC, ADE20K and the generic layout
offer segmentation; a COCO caption JSON offers retrieval; an image folder per class offers
classification. `layout="auto"` recognises each by its files:

| layout | recognised by | splits |
|---|---|---|
| shards | `manifest.parquet` or `shards/` | `train`, `val`, `test` |
| voc | `JPEGImages/` + `SegmentationClass/` | `ImageSets/Segmentation/<split>.txt` |
| ade20k | `images/` + `annotations/` | `images/<split>/` (`training`, `validation`) |
| generic | `images/` + `masks/` + `classes.txt` | none: one dataset per folder |
| coco | a `.json` file | none: the JSON is the split; images under `image_root` |
| imagefolder | class sub-folders of images | `<root>/<split>/<class>/` when present |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from tipsv2_core.eval.datasets import CaptionDataset, ClassDataset, SegDataset
from tipsv2_core.eval.readers.layouts import (
    IMAGE_SUFFIXES,
    DatasetFormatError,
    read_ade20k,
    read_coco_captions,
    read_generic_seg,
    read_image_folder,
    read_voc,
)
from tipsv2_core.eval.readers.shards import shard_eval_datasets
from tipsv2_core.uri import strip_file_scheme

LAYOUTS = ("shards", "voc", "ade20k", "generic", "coco", "imagefolder")
# (evaluation split, training split) by layout; None: the layout has no split notion.
DEFAULT_SPLITS: dict[str, tuple[str | None, str | None]] = {
    "shards": ("val", "train"),
    "voc": ("val", "train"),
    "ade20k": ("validation", "training"),
    "generic": (None, None),
    "coco": (None, None),
    "imagefolder": ("val", "train"),
}
VIEW_OF_TASK = {
    "zeroshot_seg": "seg",
    "linear_seg": "seg",
    "retrieval": "captions",
    "classification": "classes",
    "knn": "classes",
}


@dataclass
class EvalViews:
    """The views one split of a dataset offers; a view it does not offer is None."""

    layout: str
    seg: SegDataset | None = None
    captions: CaptionDataset | None = None
    classes: ClassDataset | None = None

    def view_for(self, task: str, where: str) -> SegDataset | CaptionDataset | ClassDataset:
        """The dataset `task` needs, or an error naming the layout and what it lacks."""
        view = VIEW_OF_TASK[task]
        dataset = getattr(self, view)
        if dataset is None:
            offered = [v for v in ("seg", "captions", "classes") if getattr(self, v) is not None]
            raise DatasetFormatError(
                f"{where}: a {self.layout} dataset offers {', '.join(offered)}; "
                f"task {task} needs {view}"
            )
        return dataset


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


def detect_layout(path: str | os.PathLike) -> str:
    """The layout of `path` by its files (see the module table), or a DatasetFormatError."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "coco"
        raise DatasetFormatError(f"{p}: a file, but not a COCO caption .json")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such dataset directory")
    if (p / "manifest.parquet").is_file() or (p / "shards").is_dir():
        return "shards"
    if (p / "JPEGImages").is_dir() and (p / "SegmentationClass").is_dir():
        return "voc"
    if (p / "images").is_dir() and (p / "masks").is_dir() and (p / "classes.txt").is_file():
        return "generic"
    if (p / "images").is_dir() and (p / "annotations").is_dir():
        return "ade20k"
    subdirs = [d for d in p.iterdir() if d.is_dir()]
    if subdirs and any(_has_images(d) or any(x.is_dir() for x in d.iterdir()) for d in subdirs):
        return "imagefolder"
    raise DatasetFormatError(
        f"{p}: not a known dataset layout (shards, VOC, ADE20K, generic images/ + masks/ + "
        "classes.txt, COCO caption .json, or an image folder per class); pass --layout"
    )


def _limited(dataset, limit: int | None):
    if dataset is None or limit is None:
        return dataset
    return replace(dataset, samples=dataset.samples[:limit])


def open_eval_views(
    path: str | os.PathLike,
    layout: str = "auto",
    split: str | None = None,
    *,
    field: str = "caption_medium",
    background: bool = False,
    limit: int | None = None,
    image_root: str | os.PathLike | None = None,
) -> EvalViews:
    """Reads one split of the dataset at `path` into the views its layout offers.

    `split=None` takes the layout's evaluation split (DEFAULT_SPLITS). `field` and
    `background` apply to shards; `image_root` to COCO (default: the JSON's folder).
    `limit` keeps the first N samples of each view.
    """
    path = Path(strip_file_scheme(path))
    if layout == "auto":
        layout = detect_layout(path)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")
    split = split or DEFAULT_SPLITS[layout][0]
    if layout == "shards":
        d = shard_eval_datasets(path, split, field=field, background=background, limit=limit)
        return EvalViews(layout, seg=d.seg, captions=d.captions, classes=d.classes)
    if layout == "voc":
        return EvalViews(layout, seg=_limited(read_voc(path, split), limit))
    if layout == "ade20k":
        return EvalViews(layout, seg=_limited(read_ade20k(path, split), limit))
    if layout == "generic":
        return EvalViews(layout, seg=_limited(read_generic_seg(path), limit))
    if layout == "coco":
        captions = read_coco_captions(path, image_root or path.parent)
        return EvalViews(layout, captions=_limited(captions, limit))
    # imagefolder: `<root>/<split>/<class>/` when the split folder exists, else `<root>/`.
    root = path / split if split and (path / split).is_dir() else path
    return EvalViews(layout, classes=_limited(read_image_folder(root, root.name), limit))


def open_train_views(
    path: str | os.PathLike,
    layout: str,
    split: str | None,
    train_dataset: str | os.PathLike | None,
    **kw,
) -> EvalViews:
    """The training views for kNN and the linear probe: `train_dataset` when given (same
    layout rules), else the layout's training split of `path`."""
    if train_dataset is not None:
        return open_eval_views(train_dataset, "auto" if layout == "auto" else layout, **kw)
    path = Path(strip_file_scheme(path))
    resolved = detect_layout(path) if layout == "auto" else layout
    train_split = split or DEFAULT_SPLITS[resolved][1]
    if train_split is None:
        raise DatasetFormatError(
            f"{path}: a {resolved} dataset has no training split; kNN and the linear probe "
            "need one: pass --train-dataset"
        )
    if resolved == "imagefolder" and not (path / train_split).is_dir():
        raise DatasetFormatError(
            f"{path}: no {train_split}/ folder of classes for kNN; pass --train-dataset"
        )
    return open_eval_views(path, resolved, train_split, **kw)
