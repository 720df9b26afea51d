"""Readers of standard dataset layouts: what they read, and errors that name the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tipsv2_core.eval.datasets import IGNORE_INDEX
from tipsv2_core.eval.readers.layouts import (
    DatasetFormatError,
    read_ade20k,
    read_coco_captions,
    read_generic_seg,
    read_image_folder,
    read_voc,
)

pytestmark = pytest.mark.unit


def _img(path, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path)


def _mask(path, values, mode="P"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(values, np.uint8), mode="L")
    (img.convert("P") if mode == "P" else img).save(path)


def test_voc(tmp_path):
    _img(tmp_path / "JPEGImages/a.jpg")
    _mask(tmp_path / "SegmentationClass/a.png", [[0, 15], [255, 1]])
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("a\n")
    ds = read_voc(tmp_path)
    assert len(ds.class_names) == 21 and ds.class_names[15] == "person"
    assert ds.samples[0].load_label().tolist() == [[0, 15], [255, 1]]
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("a\nb\n")
    with pytest.raises(DatasetFormatError, match=r"val.txt:2: image b.jpg not found"):
        read_voc(tmp_path)


def test_ade20k_shifts_labels_and_ignores_zero(tmp_path):
    _img(tmp_path / "images/validation/x.jpg")
    _mask(tmp_path / "annotations/validation/x.png", [[0, 1], [150, 3]], mode="L")
    ds = read_ade20k(tmp_path)
    assert len(ds.class_names) == 150 and ds.class_names[0] == "wall"
    assert ds.samples[0].load_label().tolist() == [[IGNORE_INDEX, 0], [149, 2]]
    (tmp_path / "annotations/validation/x.png").unlink()
    with pytest.raises(DatasetFormatError, match="x.png: annotation for x.jpg not found"):
        read_ade20k(tmp_path)


def test_generic_layout_and_bad_label_file(tmp_path):
    _img(tmp_path / "images/p.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks/p.png").write_bytes(b"not a png")
    (tmp_path / "classes.txt").write_text("sky\nroad\n")
    ds = read_generic_seg(tmp_path, name="roads")
    assert ds.class_names == ["sky", "road"] and ds.name == "roads"
    with pytest.raises(DatasetFormatError, match=r"masks/p.png: cannot read label map"):
        ds.samples[0].load_label()
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DatasetFormatError, match="classes.txt: missing classes.txt"):
        read_generic_seg(tmp_path)


def test_coco_captions(tmp_path):
    _img(tmp_path / "imgs/1.jpg")
    doc = {
        "images": [{"id": 1, "file_name": "1.jpg"}],
        "annotations": [{"image_id": 1, "caption": "a cat"}, {"image_id": 1, "caption": "a pet"}],
    }
    (tmp_path / "caps.json").write_text(json.dumps(doc))
    ds = read_coco_captions(tmp_path / "caps.json", tmp_path / "imgs")
    assert ds.samples[0].captions == ["a cat", "a pet"]
    doc["annotations"].append({"image_id": 9, "caption": "?"})
    (tmp_path / "caps.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetFormatError, match="caps.json: caption for unknown image_id 9"):
        read_coco_captions(tmp_path / "caps.json", tmp_path / "imgs")
    (tmp_path / "caps.json").write_text("{")
    with pytest.raises(DatasetFormatError, match="caps.json: not a COCO caption file"):
        read_coco_captions(tmp_path / "caps.json", tmp_path / "imgs")


def test_image_folder(tmp_path):
    _img(tmp_path / "golden_retriever/a.jpg")
    _img(tmp_path / "cat/b.png")
    ds = read_image_folder(tmp_path)
    assert ds.class_names == ["cat", "golden retriever"]
    assert sorted((s.key, s.label) for s in ds.samples) == [("cat-b", 0), ("golden_retriever-a", 1)]
    with pytest.raises(DatasetFormatError, match="no class sub-folders"):
        read_image_folder(tmp_path / "cat")


def _layouts(root):
    """One small dataset of each layout under `root`; returns {layout: path}."""
    _img(root / "voc/JPEGImages/a.jpg")
    _mask(root / "voc/SegmentationClass/a.png", [[0, 15], [255, 1]])
    (root / "voc/ImageSets/Segmentation").mkdir(parents=True)
    (root / "voc/ImageSets/Segmentation/val.txt").write_text("a\n")
    _img(root / "ade/images/validation/x.jpg")
    _mask(root / "ade/annotations/validation/x.png", [[0, 1], [2, 3]], mode="L")
    _img(root / "gen/images/p.png")
    _mask(root / "gen/masks/p.png", [[0, 1], [1, 0]], mode="L")
    (root / "gen/classes.txt").write_text("sky\nroad\n")
    _img(root / "coco/1.jpg")
    doc = {
        "images": [{"id": 1, "file_name": "1.jpg"}],
        "annotations": [{"image_id": 1, "caption": "c"}],
    }
    (root / "coco/caps.json").write_text(json.dumps(doc))
    for split in ("train", "val"):
        _img(root / f"folder/{split}/cat/a.jpg")
        _img(root / f"folder/{split}/dog/b.jpg")
    return {
        "voc": root / "voc",
        "ade20k": root / "ade",
        "generic": root / "gen",
        "coco": root / "coco/caps.json",
        "imagefolder": root / "folder",
    }


def test_layouts_are_recognised_and_offer_their_views(tmp_path):
    from tipsv2_core.eval.readers.resolve import detect_layout, open_eval_views

    offered = {
        "voc": ("seg",),
        "ade20k": ("seg",),
        "generic": ("seg",),
        "coco": ("captions",),
        "imagefolder": ("classes",),
    }
    for layout, path in _layouts(tmp_path).items():
        assert detect_layout(path) == layout
        views = open_eval_views(path)
        have = tuple(v for v in ("seg", "captions", "classes") if getattr(views, v) is not None)
        assert have == offered[layout], layout
    folder = open_eval_views(tmp_path / "folder", split="train")
    assert folder.classes.class_names == ["cat", "dog"] and folder.classes.name == "train"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="empty: not a known dataset layout"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nope: no such dataset"):
        detect_layout(tmp_path / "nope")


def test_views_name_what_a_task_lacks(tmp_path):
    from tipsv2_core.eval.readers.resolve import open_eval_views, open_train_views

    paths = _layouts(tmp_path)
    voc = open_eval_views(paths["voc"])
    assert voc.view_for("zeroshot_seg", "d") is voc.seg
    with pytest.raises(DatasetFormatError, match="a voc dataset offers seg; task retrieval needs"):
        voc.view_for("retrieval", "d")
    with pytest.raises(DatasetFormatError, match="generic dataset has no training split"):
        open_train_views(paths["generic"], "auto", None, None)
    train = open_train_views(paths["generic"], "generic", None, paths["generic"])
    assert len(train.seg) == 1
    with pytest.raises(DatasetFormatError, match=r"train\.txt: missing split list"):
        open_train_views(paths["voc"], "voc", None, None)  # VOC's train split: train.txt


def test_cli_layout_choices_match_the_readers():
    from pipelines.cli.evaluate import LAYOUTS as CLI_LAYOUTS
    from tipsv2_core.eval.readers.resolve import LAYOUTS

    assert CLI_LAYOUTS == LAYOUTS
