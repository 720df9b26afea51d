"""The evaluators of tipsv2_core.eval on tiny random models and toy datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import randomize_
from tipsv2_core.eval import classification, knn, linear_seg, retrieval, zeroshot_seg
from tipsv2_core.eval.datasets import (
    CaptionDataset,
    CaptionSample,
    ClassDataset,
    ClassSample,
    SegDataset,
    SegSample,
)
from tipsv2_core.eval.metrics import miou, new_confusion, pixel_accuracy, update_confusion
from tipsv2_core.eval.prompts import TCL_TEMPLATES, class_text_embeddings
from tipsv2_core.eval.protocol import (
    EVALUATORS,
    Evaluator,
    get_evaluator,
    namespaced,
    run_evaluation,
)
from tipsv2_core.models.tips import TIPSModel, l2_normalize
from tipsv2_core.text import Tokenizer, train_tokenizer

pytestmark = pytest.mark.unit
CLASSES = ["sky", "red square", "tree", "cat"]
NUM_CLASSES = len(CLASSES)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: one thread avoids OpenMP stalls when other jobs share the CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, caption_corpus) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(caption_corpus * 3, path, vocab_size=60)
    return Tokenizer(path)


def _rand_image(rng, h, w) -> Image.Image:
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


def _seg_dataset(sizes, num_classes=NUM_CLASSES, seed=0) -> SegDataset:
    """Random images (PIL size w×h from `sizes` as (h, w)) with random labels and 255s."""
    rng = np.random.default_rng(seed)
    samples = []
    for i, (h, w) in enumerate(sizes):
        img = _rand_image(rng, h, w)
        lab = rng.integers(0, num_classes, (h, w))
        lab[rng.random((h, w)) < 0.1] = 255
        samples.append(SegSample(f"img{i}", lambda img=img: img, lambda lab=lab: lab.copy()))
    return SegDataset("toyseg", CLASSES[:num_classes], samples)


def _class_emb(n=NUM_CLASSES, d=96, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(n, d, generator=gen))


# ------------------------------------------------------------------ zero-shot segmentation


def test_slide_windows_follow_the_notebook_arithmetic():
    assert zeroshot_seg.slide_windows(448, 600, 448, 336) == [(0, 448, 0, 448), (0, 448, 152, 600)]
    rows = [(y1, y2) for y1, y2, _, _ in zeroshot_seg.slide_windows(1000, 448, 448, 336)]
    assert rows == [(0, 448), (336, 784), (552, 1000)]  # last window shifted back to fit
    assert zeroshot_seg.slide_windows(100, 50, 448, 336) == [(0, 100, 0, 50)]
    assert len(zeroshot_seg.slide_windows(448, 448, 448, 336)) == 1


def test_short_side_resize_keeps_aspect_with_int_long_side():
    img = Image.new("RGB", (300, 200))  # PIL size is (w, h)
    assert zeroshot_seg.short_side_resize(img, 448).size == (672, 448)
    img = Image.new("RGB", (201, 301))
    assert zeroshot_seg.short_side_resize(img, 448).size == (448, int(301 * 448 / 201))
    img = Image.new("RGB", (56, 70))
    assert zeroshot_seg.short_side_resize(img, 56) is img  # already the right size


def test_slide_with_one_window_equals_the_softmax_of_whole(nano):
    image = torch.rand(3, 50, 65, generator=torch.Generator().manual_seed(0))  # not ×14
    emb = _class_emb()
    slide = zeroshot_seg.predict_scores(nano, image, emb, mode="slide", window=84, stride=42)
    whole = zeroshot_seg.predict_scores(nano, image, emb, mode="whole")
    assert slide.shape == whole.shape == (4, 50, 65)
    torch.testing.assert_close(slide, whole.softmax(dim=0), atol=1e-6, rtol=0)
    assert not torch.allclose(slide, whole)  # whole has no softmax
    assert torch.equal(slide.argmax(0), whole.argmax(0))


def _reference_slide(model, image, emb, window, stride):
    """The notebook's predict_slide written plainly: one window at a time."""
    _, h, w = image.shape
    preds = torch.zeros(emb.shape[0], h, w)
    count = torch.zeros(1, h, w)
    h_grids = max(h - window + stride - 1, 0) // stride + 1
    w_grids = max(w - window + stride - 1, 0) // stride + 1
    for i in range(h_grids):
        for j in range(w_grids):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + window, h), min(x1 + window, w)
            y1, x1 = max(y2 - window, 0), max(x2 - window, 0)
            crop = image[None, :, y1:y2, x1:x2]
            ch, cw = crop.shape[-2:]
            th, tw = -(-ch // 14) * 14, -(-cw // 14) * 14
            if (th, tw) != (ch, cw):
                crop = F.interpolate(crop, size=(th, tw), mode="bicubic", align_corners=False)
            with torch.no_grad():
                f = model.vision.forward_values(crop)[0]
            f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-3)
            logits = (f @ emb.T).permute(2, 0, 1)[None]
            logits = F.interpolate(logits, size=(ch, cw), mode="bilinear", align_corners=False)
            preds[:, y1:y2, x1:x2] += logits[0].softmax(dim=0)
            count[:, y1:y2, x1:x2] += 1
    return preds / count


@pytest.mark.parametrize(("window", "stride"), [(42, 28), (40, 30)])  # ×14 and resized
def test_slide_matches_a_plain_window_loop(nano, window, stride):
    image = torch.rand(3, 60, 90, generator=torch.Generator().manual_seed(1))
    emb = _class_emb()
    ref = _reference_slide(nano, image, emb, window, stride)
    for bs in (1, 4):
        ours = zeroshot_seg.predict_scores(
            nano, image, emb, mode="slide", window=window, stride=stride, batch_size=bs
        )
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_upsample_argmax_in_class_chunks_equals_the_full_argmax(monkeypatch):
    scores = torch.randn(7, 9, 11, generator=torch.Generator().manual_seed(0))
    full = F.interpolate(scores[None], size=(20, 23), mode="bilinear", align_corners=False)
    monkeypatch.setattr(zeroshot_seg, "_UPSAMPLE_ELEMS", 2 * 20 * 23)  # chunks of 2 classes
    assert torch.equal(zeroshot_seg.upsample_argmax(scores, (20, 23)), full[0].argmax(0))


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_evaluator_predictions_and_metrics_are_consistent(nano, mode):
    # label maps keep the original size (70×100 etc.) while the model sees short side 56
    ds = _seg_dataset([(70, 100), (84, 60), (56, 56)])
    emb = _class_emb()
    preds: dict[str, np.ndarray] = {}
    metrics = zeroshot_seg.evaluate(
        nano,
        None,
        ds,
        mode=mode,
        eval_size=56,
        window=42,
        stride=28,
        class_embeddings=emb,
        batch_size=3,  # batches straddle images
        progress=False,
        on_prediction=preds.__setitem__,
    )
    assert list(preds) == ["img0", "img1", "img2"]
    conf = new_confusion(4)
    for s in ds.samples:
        pred = preds[s.key]
        label = s.load_label()
        assert pred.shape == label.shape and pred.dtype == np.uint8
        # the streamed, batched evaluator agrees with the one-image path
        image = zeroshot_seg.prepare_image(s.load_image(), 56)
        scores = zeroshot_seg.predict_scores(nano, image, emb, mode=mode, window=42, stride=28)
        expected = zeroshot_seg.upsample_argmax(scores, label.shape).numpy()
        assert (pred == expected).mean() > 0.999  # float ties at most
        update_confusion(conf, pred, label)
    mean, iou = miou(conf)
    assert metrics["miou"] == pytest.approx(mean)
    assert metrics["pixel_acc"] == pytest.approx(pixel_accuracy(conf))
    assert metrics["iou/red square"] == pytest.approx(iou[1])
    assert set(metrics) == {"miou", "pixel_acc"} | {f"iou/{c}" for c in CLASSES}


def test_perfect_class_embeddings_segment_perfectly(nano):
    """Class embeddings equal to the value features of two images' patches -> mIoU 1.

    Each image is one class: its label is all that class, and its class embedding is the
    mean of its own normalised patch features, which should beat the other image's.
    """
    rng = np.random.default_rng(3)
    imgs = [_rand_image(rng, 28, 28), Image.new("RGB", (28, 28), (250, 10, 10))]
    feats = []
    for img in imgs:
        x = zeroshot_seg.prepare_image(img, 28)[None]
        with torch.no_grad():
            feats.append(l2_normalize(nano.vision.forward_values(x)[0].reshape(-1, 96)).mean(0))
    emb = l2_normalize(torch.stack(feats))
    samples = [
        SegSample(f"k{i}", lambda im=im: im, lambda i=i: np.full((28, 28), i))
        for i, im in enumerate(imgs)
    ]
    ds = SegDataset("perfect", ["noise", "red"], samples)
    for mode in ("slide", "whole"):
        m = zeroshot_seg.evaluate(
            nano, None, ds, mode=mode, eval_size=28, class_embeddings=emb, progress=False
        )
        assert m["miou"] == 1.0 and m["pixel_acc"] == 1.0


def test_evaluator_rejects_bad_options(nano):
    ds = _seg_dataset([(28, 28)])
    with pytest.raises(ValueError, match="mode"):
        zeroshot_seg.evaluate(nano, None, ds, mode="tiles", class_embeddings=_class_emb())
    with pytest.raises(ValueError, match="stride"):
        zeroshot_seg.evaluate(nano, None, ds, window=28, stride=42, class_embeddings=_class_emb())
    with pytest.raises(ValueError, match="tokenizer"):
        zeroshot_seg.evaluate(nano, None, ds)
    with pytest.raises(ValueError, match="class embeddings"):
        zeroshot_seg.evaluate(nano, None, ds, class_embeddings=_class_emb(3), progress=False)


# ------------------------------------------------------------------------------ prompts


def test_templates_are_the_nine_tcl_ones():
    assert len(TCL_TEMPLATES) == 9
    assert TCL_TEMPLATES[0] == "itap of a {}." and TCL_TEMPLATES[-1] == "a photo of {}s."
    assert "a {} in a video game." in TCL_TEMPLATES


def test_template_averaging_equals_a_hand_loop(nano, tokenizer):
    names = ["cat", "red square", "a very long class name with many words"]
    ours = class_text_embeddings(nano, tokenizer, names, TCL_TEMPLATES, batch_size=5)
    rows = []
    for name in names:
        per_template = []
        for t in TCL_TEMPLATES:
            ids, pads = tokenizer([t.format(name)])  # padded to 64, one at a time
            with torch.no_grad():
                e = nano.text(torch.from_numpy(ids), torch.from_numpy(pads))[0]
            per_template.append(e / e.norm())
        mean = torch.stack(per_template).mean(0)
        rows.append(mean / mean.norm())
    torch.testing.assert_close(ours, torch.stack(rows), atol=1e-5, rtol=0)
    assert ours.shape == (3, 96)


# ---------------------------------------------------------------------- image embeddings


def _image_batch(images, size):
    arrs = [np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)) for im in images]
    return torch.from_numpy(np.stack(arrs).astype(np.float32) / 255).permute(0, 3, 1, 2)


def _hand_cls(model, images, size, which):
    with torch.no_grad():
        c1, c2 = model.encode_image(_image_batch(images, size))
    return c1 if which == "cls1" else c2


def _caption_dataset(rng) -> CaptionDataset:
    captions = [
        ["a red circle on a striped background.", "red circle"],
        ["a green star near a tree."],
        ["a blue heart next to a small cat.", "blue heart", "a heart that is blue"],
        ["a yellow cross in the top left.", "yellow cross"],
    ]
    images = [_rand_image(rng, 30 + 7 * i, 40) for i in range(len(captions))]
    return CaptionDataset(
        "toycap",
        [
            CaptionSample(f"c{i}", lambda im=im: im, caps)
            for i, (im, caps) in enumerate(zip(images, captions, strict=True))
        ],
    )


def _brute_recalls(img, txt, t2i, k):
    sim = (img @ txt.T).numpy()
    i2t = []
    for i in range(sim.shape[0]):
        mine = [t for t in range(sim.shape[1]) if t2i[t] == i]
        best = max(sim[i, t] for t in mine)
        i2t.append(sum(1 for t in range(sim.shape[1]) if t not in mine and sim[i, t] >= best))
    t2i_r = [
        sum(1 for j in range(sim.shape[0]) if j != t2i[t] and sim[j, t] >= sim[t2i[t], t])
        for t in range(sim.shape[1])
    ]
    return np.mean(np.array(i2t) < k), np.mean(np.array(t2i_r) < k)


@pytest.mark.parametrize("which", ["cls1", "cls2"])
def test_retrieval_matches_a_brute_force_computation(nano, tokenizer, which):
    ds = _caption_dataset(np.random.default_rng(0))
    m = retrieval.evaluate(
        nano, tokenizer, ds, cls=which, image_size=28, batch_size=3, progress=False
    )
    assert set(m) == {f"{d}_r@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    img = _hand_cls(nano, [s.load_image() for s in ds.samples], 28, which)
    texts = [c for s in ds.samples for c in s.captions]
    ids, pads = tokenizer(texts)
    with torch.no_grad():
        txt = nano.encode_text(torch.from_numpy(ids), torch.from_numpy(pads))
    t2i = [i for i, s in enumerate(ds.samples) for _ in s.captions]
    for k in (1, 5, 10):
        i2t_ref, t2i_ref = _brute_recalls(img, txt, t2i, k)
        assert m[f"i2t_r@{k}"] == pytest.approx(i2t_ref)
        assert m[f"t2i_r@{k}"] == pytest.approx(t2i_ref)
    assert m["i2t_r@10"] == 1.0 and m["t2i_r@5"] == 1.0  # only 4 images, 9 captions


def test_retrieval_rejects_images_without_captions(nano, tokenizer):
    ds = CaptionDataset("bad", [CaptionSample("x", lambda: Image.new("RGB", (28, 28)), [])])
    with pytest.raises(ValueError, match="without captions"):
        retrieval.evaluate(nano, tokenizer, ds, image_size=28, progress=False)


def _class_dataset(rng, n_per_class=2, classes=("a", "b", "c")) -> ClassDataset:
    samples = []
    for label in range(len(classes)):
        for j in range(n_per_class):
            im = _rand_image(rng, 28 + 5 * j, 36)
            samples.append(ClassSample(f"{label}-{j}", lambda im=im: im, label))
    return ClassDataset("toycls", list(classes), samples)


def test_zero_shot_classification_with_perfect_class_embeddings(nano):
    """Each class embedded as exactly one image's CLS1: that image is classified right."""
    ds = _class_dataset(np.random.default_rng(1), n_per_class=1, classes=tuple("abcdef"))
    emb = _hand_cls(nano, [s.load_image() for s in ds.samples], 28, "cls1")
    m = classification.evaluate(
        nano, None, ds, image_size=28, class_embeddings=emb, batch_size=4, progress=False
    )
    assert m == {"top1": 1.0, "top5": 1.0}
    threaded = classification.evaluate(
        nano, None, ds, image_size=28, class_embeddings=emb, num_workers=2, progress=False
    )
    assert threaded == m  # images loaded by threads, still in order
    # the same embeddings compared with CLS2 need not be perfect, but must still be valid
    m2 = classification.evaluate(
        nano, None, ds, cls="cls2", image_size=28, class_embeddings=emb, progress=False
    )
    assert 0.0 <= m2["top1"] <= m2["top5"] <= 1.0


def test_zero_shot_classification_matches_a_hand_argmax(nano, tokenizer):
    ds = _class_dataset(np.random.default_rng(2))
    m = classification.evaluate(nano, tokenizer, ds, image_size=28, progress=False)
    emb = class_text_embeddings(nano, tokenizer, ds.class_names)
    img = _hand_cls(nano, [s.load_image() for s in ds.samples], 28, "cls1")
    pred = (img @ emb.T).argmax(1)
    labels = torch.tensor([s.label for s in ds.samples])
    assert m["top1"] == pytest.approx((pred == labels).float().mean().item())
    assert m["top5"] == 1.0  # 3 classes


def test_knn_finds_each_image_itself_with_k_1(nano):
    ds = _class_dataset(np.random.default_rng(4))
    m = knn.evaluate(nano, None, ds, train=ds, k=1, image_size=28, progress=False)
    assert m == {"top1": 1.0, "top5": 1.0}


def test_knn_rejects_mismatched_class_lists(nano):
    rng = np.random.default_rng(5)
    a, b = _class_dataset(rng), _class_dataset(rng, classes=("x", "y", "z"))
    with pytest.raises(ValueError, match="class lists"):
        knn.evaluate(nano, None, a, train=b, image_size=28, progress=False)


# ---------------------------------------------------------------------------- linear probe

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


def _colour_dataset(name, n, seed) -> SegDataset:
    """Images of 14-px cells coloured by class (plus noise); the label is the colour."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        cells = rng.integers(0, 3, (4, 4))
        label = np.kron(cells, np.ones((14, 14), dtype=np.int64))
        img = np.array(COLOURS, dtype=np.float64)[label] + rng.normal(0, 12, (56, 56, 3))
        label[:3] = 255  # an ignored strip
        img = Image.fromarray(img.clip(0, 255).astype(np.uint8))
        samples.append(SegSample(f"{name}{i}", lambda im=img: im, lambda lab=label: lab))
    return SegDataset(name, ["red", "green", "blue"], samples)


def test_linear_probe_learns_colour_regions_and_is_repeatable(nano):
    train, val = _colour_dataset("train", 4, 0), _colour_dataset("val", 2, 1)
    opts = dict(train=train, image_size=56, steps=40, lr=1e-2, batch_tokens=256, progress=False)
    m = linear_seg.evaluate(nano, None, val, **opts)
    assert set(m) == {"miou", "pixel_acc"}
    assert m["miou"] > 0.9  # chance is about 1/3
    assert linear_seg.evaluate(nano, None, val, **opts) == m


def test_linear_probe_with_shuffled_labels_stays_near_chance(nano):
    """The same probe cannot read labels that are unrelated to the image content."""
    train, val = _colour_dataset("train", 4, 0), _colour_dataset("val", 2, 1)
    rng = np.random.default_rng(9)
    for s in train.samples:
        noise = np.kron(rng.integers(0, 3, (4, 4)), np.ones((14, 14), dtype=np.int64))
        shuffled = np.where(s.load_label() == 255, 255, noise)
        s.load_label = lambda lab=shuffled: lab
    m = linear_seg.evaluate(
        nano,
        None,
        val,
        train=train,
        image_size=56,
        steps=40,
        lr=1e-2,
        batch_tokens=256,
        progress=False,
    )
    assert m["miou"] < 0.6


# --------------------------------------------------------------------------------- protocol


def test_registry_and_namespacing():
    assert set(EVALUATORS) == {"zeroshot_seg", "retrieval", "classification", "knn", "linear_seg"}
    for name, ev in EVALUATORS.items():
        assert isinstance(ev, Evaluator) and ev.name == name
    assert namespaced("zeroshot_seg", "ade150", {"miou": 0.25, "iou/wall": 0.5}) == {
        "eval/zeroshot_seg/ade150/miou": 0.25,
        "eval/zeroshot_seg/ade150/iou/wall": 0.5,
    }
    with pytest.raises(ValueError, match="dataset name"):
        namespaced("retrieval", "a/b", {})
    with pytest.raises(ValueError, match="unknown evaluator"):
        get_evaluator("depth")


def test_run_evaluation_checks_the_dataset_type(nano, tokenizer):
    with pytest.raises(TypeError, match="SegDataset"):
        run_evaluation("zeroshot_seg", nano, tokenizer, CaptionDataset("c", []))


def test_run_evaluation_end_to_end_keeps_train_mode(tokenizer):
    model = randomize_(TIPSModel("nano14"), seed=1).train()
    ds = _seg_dataset([(30, 40), (28, 28)])
    out = run_evaluation(
        "zeroshot_seg", model, tokenizer, ds, eval_size=28, device="cpu", progress=False
    )
    assert "eval/zeroshot_seg/toyseg/miou" in out
    assert all(k.startswith("eval/zeroshot_seg/toyseg/") for k in out)
    assert 0.0 <= out["eval/zeroshot_seg/toyseg/miou"] <= 1.0
    assert model.training  # the evaluator restored the mode it found
