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
