"""Evaluator throughput: our zero-shot segmentation and retrieval vs plainly written loops.

Zero-shot segmentation (slide 448/336 and whole, 150 classes, random images at
`--height`×`--width`, short side resized to 448): ours batches windows of the same size
across images; the baseline runs the notebook's loop one window at a time. Retrieval
(`--captions` per image, images at 448²): ours batches images and length-sorted,
batch-padded captions; the baseline embeds one image and one caption (padded to 64) at a
time. Random ti14 weights, class embeddings given (the text side of segmentation runs
once per dataset and is not timed). All contenders run interleaved in one process, so
their ratios hold on a noisy machine; each row also checks that both agree.

    .venv/bin/python bench/eval.py [--images 2] [--reps 3] [--variant ti14] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import interleaved_times, median, write_results
from tests.conftest import randomize_
from tipsv2_core.eval import retrieval, zeroshot_seg
from tipsv2_core.eval.datasets import CaptionDataset, CaptionSample, SegDataset, SegSample
from tipsv2_core.eval.metrics import miou, new_confusion, update_confusion
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.text import Tokenizer, train_tokenizer

NUM_CLASSES = 150
WORDS = ["red", "green", "blue", "circle", "square", "star", "striped", "small", "large"]


# ------------------------------------------------------------------------ plain baselines


def baseline_zeroshot_seg(model, dataset, class_emb, mode, size=448, window=448, stride=336):
    """The notebook's procedure, one image and one window at a time -> (miou, preds)."""
    conf = new_confusion(len(dataset.class_names))
    preds = []
    for sample in dataset.samples:
        img = sample.load_image().convert("RGB")
        w, h = img.size
        new = (size, int(h * size / w)) if w <= h else (int(w * size / h), size)
        img = img.resize(new, Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        _, _, hh, ww = x.shape
        if mode == "whole":
            win, st = max(hh, ww), max(hh, ww)
        else:
            win, st = window, stride
        scores = torch.zeros(1, NUM_CLASSES, hh, ww)
        count = torch.zeros(1, 1, hh, ww)
        h_grids = max(hh - win + st - 1, 0) // st + 1
        w_grids = max(ww - win + st - 1, 0) // st + 1
        for i in range(h_grids):
            for j in range(w_grids):
                y2, x2 = min(i * st + win, hh), min(j * st + win, ww)
                y1, x1 = max(y2 - win, 0), max(x2 - win, 0)
                crop = x[:, :, y1:y2, x1:x2]
                ch, cw = crop.shape[-2:]
                th, tw = -(-ch // 14) * 14, -(-cw // 14) * 14
                if (th, tw) != (ch, cw):
                    crop = F.interpolate(crop, size=(th, tw), mode="bicubic", align_corners=False)
                f = model.vision.forward_values(crop)
                f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-3)
                logits = (f @ class_emb.T).permute(0, 3, 1, 2)
                logits = F.interpolate(logits, size=(ch, cw), mode="bilinear", align_corners=False)
                if mode == "slide":
                    logits = logits.softmax(dim=1)
                scores[:, :, y1:y2, x1:x2] += logits
                count[:, :, y1:y2, x1:x2] += 1
        scores = scores / count
        label = sample.load_label()
        scores = F.interpolate(scores, size=label.shape, mode="bilinear", align_corners=False)
        pred = scores[0].argmax(dim=0).numpy()
        update_confusion(conf, pred, label)
        preds.append(pred)
    return miou(conf)[0], preds


def baseline_retrieval(model, tokenizer, dataset, image_size=448):
    """One image, one caption at a time; ranks by sorting the full similarity matrix."""
    imgs = []
    for s in dataset.samples:
        im = s.load_image().convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        imgs.append(model.encode_image(x)[0][0])
    txts, owner = [], []
    for i, s in enumerate(dataset.samples):
        for c in s.captions:
            ids, pads = tokenizer([c])
            txts.append(model.encode_text(torch.from_numpy(ids), torch.from_numpy(pads))[0])
            owner.append(i)
    sim = torch.stack(imgs) @ torch.stack(txts).T
    owner = torch.tensor(owner)
    i2t = [
        int((owner[sim[i].argsort(descending=True)] == i).nonzero()[0]) for i in range(len(imgs))
    ]
    t2i = [
        int((sim[:, t].argsort(descending=True) == owner[t]).nonzero()[0]) for t in range(len(txts))
    ]
    return {
        "i2t_r@1": float(np.mean(np.array(i2t) < 1)),
        "t2i_r@1": float(np.mean(np.array(t2i) < 1)),
    }


# ----------------------------------------------------------------------------------- data


def seg_dataset(n: int, height: int, width: int, seed: int = 0) -> SegDataset:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        img = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
        lab = rng.integers(0, NUM_CLASSES, (height, width))
        samples.append(SegSample(f"s{i}", lambda img=img: img, lambda lab=lab: lab))
    return SegDataset("synthetic", [f"class{i}" for i in range(NUM_CLASSES)], samples)


def caption_dataset(n: int, captions: int, height: int, width: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        img = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
        caps = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) for _ in range(captions)]
        samples.append(CaptionSample(f"c{i}", lambda img=img: img, caps))
    return CaptionDataset("synthetic", samples)


# ------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="ti14")
    parser.add_argument("--images", type=int, default=2, help="images per timed call")
    parser.add_argument("--height", type=int, default=448)
    parser.add_argument("--width", type=int, default=600)
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--batch-size", type=int, default=8, help="windows / images per pass")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = randomize_(TIPSModel(args.variant, pos_grid=32), scale=0.02).eval().to(args.device)
    gen = torch.Generator().manual_seed(2)
    class_emb = F.normalize(torch.randn(NUM_CLASSES, model.vision.embed_dim, generator=gen), dim=-1)
    class_emb = class_emb.to(args.device)
    seg = seg_dataset(args.images, args.height, args.width)
    cap = caption_dataset(args.images, args.captions, args.height, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = [c for s in caption_dataset(64, 5, 8, 8, seed=3).samples for c in s.captions]
        tokenizer = Tokenizer(train_tokenizer(corpus, Path(tmp) / "tok.model", vocab_size=40))

    rows = []
    for mode in ("slide", "whole"):

        def ours(mode=mode):
            preds = []
            m = zeroshot_seg.evaluate(
                model,
                None,
                seg,
                mode=mode,
                class_embeddings=class_emb,
                batch_size=args.batch_size,
                progress=False,
                on_prediction=lambda _k, p: preds.append(p),
            )
            return m["miou"], preds

        def base(mode=mode):
            with torch.inference_mode():
                return baseline_zeroshot_seg(model, seg, class_emb.cpu(), mode)

        if args.device != "cpu":
            base = None  # the baseline is written for CPU tensors
        (m_ours, p_ours) = ours()
        fns = {"ours": ours}
        row = {"task": f"zeroshot_seg/{mode}", "images": args.images}
        if base is not None:
            m_base, p_base = base()
            agree = np.mean([(a == b).mean() for a, b in zip(p_ours, p_base, strict=True)])
            row.update(miou_abs_diff=abs(m_ours - m_base), pixel_agreement=float(agree))
            fns["baseline"] = base
        times = interleaved_times(fns, args.reps)
        row["ours_img_s"] = args.images / median(times["ours"])
        if base is not None:
            row["baseline_img_s"] = args.images / median(times["baseline"])
            row["speedup"] = median(times["baseline"]) / median(times["ours"])
        rows.append(row)

    def ours_ret():
        return retrieval.evaluate(model, tokenizer, cap, batch_size=args.batch_size, progress=False)

    def base_ret():
        with torch.inference_mode():
            return baseline_retrieval(model, tokenizer, cap)

    row = {"task": "retrieval", "images": args.images, "captions": args.images * args.captions}
    fns = {"ours": ours_ret}
    if args.device == "cpu":
        r_ours, r_base = ours_ret(), base_ret()
        row["r@1_abs_diff"] = max(abs(r_ours[k] - r_base[k]) for k in r_base)
        fns["baseline"] = base_ret
    times = interleaved_times(fns, args.reps)
    row["ours_img_s"] = args.images / median(times["ours"])
    if "baseline" in times:
        row["baseline_img_s"] = args.images / median(times["baseline"])
        row["speedup"] = median(times["baseline"]) / median(times["ours"])
    rows.append(row)

    print(f"{'task':<20}{'ours img/s':>12}{'base img/s':>12}{'speedup':>10}  check")
    for r in rows:
        check = (
            f"pixels agree {r['pixel_agreement']:.4f}, |Δmiou| {r['miou_abs_diff']:.1e}"
            if "pixel_agreement" in r
            else f"|Δr@1| {r.get('r@1_abs_diff', float('nan')):.1e}"
        )
        print(
            f"{r['task']:<20}{r['ours_img_s']:>12.2f}{r.get('baseline_img_s', float('nan')):>12.2f}"
            f"{r.get('speedup', float('nan')):>9.2f}x  {check}"
        )
    extra = {"config": {k: v for k, v in vars(args).items()}, "num_classes": NUM_CLASSES}
    print(f"wrote {write_results('eval', rows, extra)}")


if __name__ == "__main__":
    main()
