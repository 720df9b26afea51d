"""`tipsv2 eval` on a small synthetic dataset, and the shard reader behind it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.eval.datasets import IGNORE_INDEX
from tipsv2_core.eval.readers import shard_eval_datasets
from tipsv2_core.text import train_tokenizer

pytestmark = pytest.mark.integration
TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaldata") / "synth"
    write_synthetic_dataset(str(out), num_images=60, image_size=112, seed=3, progress=False)
    return out


def test_shard_reader_views(dataset):
    views = shard_eval_datasets(dataset, "train")
    assert views.seg.class_names[0] == "circle"  # background dropped, classes shifted
    label = views.seg.samples[0].load_label()
    assert (
        label.dtype == np.int64 and label.max() < len(views.seg.class_names)
    ) or IGNORE_INDEX in label
    assert set(np.unique(label)) <= set(range(len(views.seg.class_names))) | {IGNORE_INDEX}
    with_bg = shard_eval_datasets(dataset, "train", background=True)
    assert with_bg.seg.class_names[0] == "background"
    assert (with_bg.seg.samples[0].load_label() == 0).any()
    assert all(len(s.captions) == 1 for s in views.captions.samples)
    with pytest.raises(ValueError, match="caption field"):
        shard_eval_datasets(dataset, "train", field="title")


def test_eval_cli_runs_every_task_and_saves_predictions(dataset, tmp_path, caption_corpus):
    ckpt, tok = tmp_path / "nano", tmp_path / "tok.model"
    subprocess.run([TIPSV2, "model", "init", "--variant", "nano14", "--out", str(ckpt)], check=True)
    train_tokenizer(caption_corpus, tok, vocab_size=50)
    preds, out = tmp_path / "preds", tmp_path / "metrics.json"
    args = ["eval", "--checkpoint", str(ckpt), "--dataset", str(dataset), "--tokenizer", str(tok)]
    args += ["--split", "train", "--train-split", "train", "--limit", "12", "--eval-size", "112"]
    report = tmp_path / "report" / "eval.html"
    args += ["--image-size", "112", "--save-predictions", str(preds), "--report", str(report)]
    args += ["--output", str(out), "--quiet"]
    res = subprocess.run([TIPSV2, *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads(out.read_text())
    wanted = ["zeroshot_seg/miou", "retrieval/i2t_r@1", "classification/top1", "knn/top1"]
    for key in [*wanted, "linear_seg/miou"]:
        task, metric = key.split("/")
        assert 0.0 <= metrics[f"eval/{task}/synth-train/{metric}"] <= 1.0
    keys = [s.key for s in shard_eval_datasets(dataset, "train", limit=12).seg.samples]
    assert sorted(p.name for p in preds.glob("*_overlay.png")) == sorted(
        f"{k}_overlay.png" for k in keys
    )
    assert all((preds / f"{k}.png").is_file() for k in keys)
    page = report.read_text()
    for section in (
        "Lineage",
        "Metrics",
        "Per-class IoU",
        "Predictions",
        "PCA features",
        "Training curves",
    ):
        assert f"<h2>{section}</h2>" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") >= 3 * 6 + 3  # 6 prediction rows, 3 PCA maps
    assert (report.parent / "eval_per_class_iou.png").is_file()
    bad = subprocess.run([TIPSV2, *args[:-1], "--tasks", "depth"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown task" in bad.stderr


def test_segment_and_features_commands(dataset, tmp_path, caption_corpus):
    from PIL import Image

    ckpt, tok = tmp_path / "nano", tmp_path / "tokenizer.model"
    subprocess.run([TIPSV2, "model", "init", "--variant", "nano14", "--out", str(ckpt)], check=True)
    train_tokenizer(caption_corpus, ckpt / "tokenizer.model", vocab_size=50)  # found beside it
    sample = shard_eval_datasets(dataset, "train", limit=1).seg.samples[0]
    sample.load_image().save(tmp_path / "in.png")
    seg = [TIPSV2, "segment", str(tmp_path / "in.png"), "--checkpoint", str(ckpt)]
    seg += [
        "--classes",
        "circle, star,background",
        "--eval-size",
        "112",
        "--out",
        str(tmp_path / "o.png"),
    ]
    res = subprocess.run(seg, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    share = json.loads(res.stdout)["pixel_share"]
    assert list(share) == ["circle", "star", "background"] and abs(sum(share.values()) - 1) < 1e-3
    assert Image.open(tmp_path / "o.png").size == (112, 112)
    feat = [TIPSV2, "features", str(tmp_path / "in.png"), "--checkpoint", str(ckpt)]
    feat += ["--image-size", "224", "--out", str(tmp_path / "pca.png")]
    subprocess.run(feat, check=True, capture_output=True, timeout=300)
    pca = np.asarray(Image.open(tmp_path / "pca.png"))
    assert pca.shape == (224, 224, 3) and pca.std() > 0  # the components vary over the image
    missing = subprocess.run(
        [*feat[:2], str(tmp_path / "nope.png"), *feat[3:]], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "nope.png: cannot read image" in missing.stderr
    assert not tok.exists()


def _export_layouts(dataset, root):
    """The synthetic dataset rewritten as a generic seg folder, a COCO caption JSON and an
    image folder per class (train/ and val/): what a user brings from elsewhere."""
    from PIL import Image

    seg_root, folder = root / "generic", root / "folder"
    (seg_root / "images").mkdir(parents=True)
    (seg_root / "masks").mkdir()
    doc = {"images": [], "annotations": []}
    for split in ("train", "val"):
        views = shard_eval_datasets(dataset, split, limit=10)
        names = views.classes.class_names
        for i, s in enumerate(views.seg.samples):
            image = s.load_image()
            if split == "val":
                image.save(seg_root / "images" / f"{s.key}.png")
                Image.fromarray(s.load_label().astype(np.uint8)).save(
                    seg_root / "masks" / f"{s.key}.png"
                )
                image.save(root / f"{s.key}.jpg")
                doc["images"].append({"id": i, "file_name": f"{s.key}.jpg"})
                caps = views.captions.samples[i].captions
                doc["annotations"] += [{"image_id": i, "caption": c} for c in caps]
        for c in views.classes.samples:
            target = folder / split / names[c.label].replace(" ", "_") / f"{c.key}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            c.load_image().save(target)
    all_names = shard_eval_datasets(dataset).seg.class_names
    (seg_root / "classes.txt").write_text("\n".join(all_names))
    for split in ("train", "val"):  # every class in both splits, as kNN requires
        for name in all_names:
            (folder / split / name.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
    (root / "captions.json").write_text(json.dumps(doc))
    return seg_root, root / "captions.json", folder


def test_eval_cli_reads_other_layouts(dataset, tmp_path, caption_corpus):
    ckpt = tmp_path / "nano"
    subprocess.run([TIPSV2, "model", "init", "--variant", "nano14", "--out", str(ckpt)], check=True)
    train_tokenizer(caption_corpus, ckpt / "tokenizer.model", vocab_size=50)
    seg_root, coco, folder = _export_layouts(dataset, tmp_path / "layouts")
    base = [TIPSV2, "eval", "--checkpoint", str(ckpt), "--image-size", "112", "--quiet"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=600)

    seg_args = [
        "--dataset",
        str(seg_root),
        "--eval-size",
        "112",
        "--report",
        str(tmp_path / "s.html"),
    ]
    res = run(*seg_args, "--tasks", "zeroshot_seg,linear_seg", "--train-dataset", str(seg_root))
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads(res.stdout)
    assert {"eval/zeroshot_seg/generic/miou", "eval/linear_seg/generic/miou"} <= set(metrics)
    assert "Predictions" in (tmp_path / "s.html").read_text()

    res = run("--dataset", str(coco), "--tasks", "retrieval")
    assert res.returncode == 0, res.stderr[-2000:]
    assert 0 <= json.loads(res.stdout)["eval/retrieval/captions/t2i_r@1"] <= 1

    res = run("--dataset", str(folder), "--tasks", "classification,knn")
    assert res.returncode == 0, res.stderr[-2000:]
    assert {"eval/classification/val/top1", "eval/knn/val/top1"} <= set(json.loads(res.stdout))

    # What a layout cannot give is an error before any model work, naming it.
    res = run("--dataset", str(seg_root), "--tasks", "retrieval")
    assert res.returncode == 2 and "generic dataset offers seg; task retrieval needs" in res.stderr
    res = run("--dataset", str(seg_root), "--tasks", "linear_seg")
    assert res.returncode == 2 and "pass --train-dataset" in res.stderr
