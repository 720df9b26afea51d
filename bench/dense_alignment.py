"""Where dense alignment stops: CLS-level versus patch-level text alignment over training.

Trains nano14 at 112 px with the contrastive loss alone (CLS1, or with `--pool mean` the
mean of the output patch tokens, against each image's alt-text, batch 32, the demo's
temperature 0.1, held fixed so that runs compare) on the default `dense` world, and every
`--every` steps measures on 300 held-out scenes of another seed:

- zs_miou: the platform's zero-shot segmentation mIoU (`tipsv2_core.eval.zeroshot_seg`,
  whole image, every object pixel, background ignored): what `make run` reports;
- cls_acc: CLS1 zero-shot accuracy against the majority object class of the image;
- patch_acc / patch_miou: the values-trick patch features (what zero-shot segmentation
  reads) scored against the class of each 14-px patch (patches at least half covered by
  one object; background and ignore excluded), 9 TCL templates;
- token_acc: the same for the ordinary output patch tokens;
- probe_acc: a ridge-regression probe on the frozen output patch tokens, fitted on the
  patches of the first half of the held-out scenes and scored on the second half: whether
  the patch features hold the class at all, text or no text (the supervised bound);
- own_value_acc: each patch's own projected value in the last block, alone (no residual,
  no MLP): the part of the values trick that the CLS-level loss trains;
- cls_path_acc: each patch read through the CLS's path, as if the last block's CLS1
  attended to that patch only (CLS1's residual + the patch's value, the MLP, the norm);
- broadcast_acc: every patch given the class the CLS predicts for the whole image — the
  control that tells a per-patch readout from the image's class copied to every patch;
- cls_path_meanctx_acc: cls_path_acc with the CLS1 residual replaced by its mean over the
  held-out scenes, which removes the image-level context.

The question it answers: does a well-aligned CLS carry its patches with it at this scale?
The supervised reference (nano14 trained on the patch labels directly reaches ~71 % patch
accuracy in 300 steps) is in the README's "Learning dense alignment" section.

    .venv/bin/python bench/dense_alignment.py                  # 1,200 steps
    .venv/bin/python bench/dense_alignment.py --steps 200 --every 100 --out /tmp/q.json
    .venv/bin/python bench/dense_alignment.py --objects 1 \
        --out bench/results/dense_alignment_one_object.json       # one object per scene
    .venv/bin/python bench/dense_alignment.py --freeze-text --steps 600 --every 100 \
        --out bench/results/dense_alignment_frozen_text.json      # random text tower
    .venv/bin/python bench/dense_alignment.py --size 56 \
        --out bench/results/dense_alignment_56px.json             # 4x4 patches
    .venv/bin/python bench/dense_alignment.py --size 56 --train-images 20000 --steps 2400 \
        --every 400 --out bench/results/dense_alignment_56px_20k.json  # and 20,000 scenes
    .venv/bin/python bench/dense_alignment.py --size 56 --train-images 20000 --steps 1200 \
        --seed 1 --out bench/results/dense_alignment_56px_20k_seed1.json  # another init
    .venv/bin/python bench/dense_alignment.py --size 56 --train-images 20000 --steps 2400 \
        --every 400 --pool mean --seed 0 \
        --out bench/results/dense_alignment_56px_20k_mean_seed0.json  # mean-pooled patches

`--size` below 112 draws the scenes at 112 px (the generator's smallest size) and
downscales them by area averaging; the patch labels are read from the label maps at the
new size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tipsv2_core.data.classes import IGNORE_INDEX
from tipsv2_core.data.synthetic import generate_scene
from tipsv2_core.data.worlds import World, get_world
from tipsv2_core.eval import zeroshot_seg
from tipsv2_core.eval.datasets import SegDataset, SegSample
from tipsv2_core.eval.prompts import TCL_TEMPLATES, class_text_embeddings
from tipsv2_core.eval.readers.shards import remap_labels
from tipsv2_core.models.tips import TIPSModel, l2_normalize
from tipsv2_core.models.vision import NUM_PREFIX_TOKENS
from tipsv2_core.text.tokenizer import Tokenizer, train_tokenizer

PATCH = 14


def scenes(
    seed: int, n: int, size: int, world: World | None = None
) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """n scenes -> images uint8 [n, 3, S, S], label maps [n, S, S], alt-texts."""
    world = world or get_world("dense")
    sc = [generate_scene(seed, i, size, world) for i in range(n)]
    images = torch.from_numpy(np.stack([s.image for s in sc])).permute(0, 3, 1, 2).contiguous()
    return images, np.stack([s.label for s in sc]), [s.captions["alt_text"] for s in sc]


def seg_dataset(images: torch.Tensor, labels: np.ndarray, world: World) -> SegDataset:
    """The held-out scenes as the platform's zero-shot segmentation reads a synthetic
    split (`tipsv2_core/eval/readers/shards.py`): the object classes, background pixels
    ignored as in ADE150, every other pixel scored."""
    remapped = remap_labels(labels, background=False)

    def sample(i: int) -> SegSample:
        return SegSample(
            key=str(i),
            load_image=lambda: Image.fromarray(images[i].permute(1, 2, 0).numpy()),
            load_label=lambda: remapped[i],
        )

    return SegDataset("heldout", list(world.classes), [sample(i) for i in range(len(images))])


def patch_labels(labels: np.ndarray) -> np.ndarray:
    """[n, S, S] label maps -> [n, S/14, S/14] class index (label - 1) of each patch that
    one object covers at least half of, IGNORE_INDEX elsewhere."""
    n, s, _ = labels.shape
    g = s // PATCH
    blocks = labels.reshape(n, g, PATCH, g, PATCH).transpose(0, 1, 3, 2, 4).reshape(n, g, g, -1)
    out = np.full((n, g, g), IGNORE_INDEX)
    for idx in np.ndindex(n, g, g):
        b = blocks[idx]
        b = b[(b > 0) & (b < IGNORE_INDEX)]
        if len(b) >= PATCH * PATCH // 2:
            out[idx] = np.bincount(b).argmax() - 1
    return out


def majority_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[n, S, S] -> [n] index of the object class with most pixels."""
    out = []
    for lab in labels:
        v = lab[(lab > 0) & (lab < IGNORE_INDEX)]
        out.append(np.bincount(v, minlength=num_classes + 1)[1:].argmax())
    return np.array(out)


@torch.no_grad()
def measure(model, tok, names, images, patch_lab, majority, seg) -> dict[str, float]:
    zs = zeroshot_seg.evaluate(
        model, tok, seg, mode="whole", eval_size=images.shape[-1], progress=False
    )
    model.eval()
    ce = class_text_embeddings(model, tok, names, TCL_TEMPLATES)  # [C, D]
    x = images.float() / 255
    out = model.vision(x)
    cls_pred = (l2_normalize(out.cls1) @ ce.T).argmax(1).numpy()
    keep = patch_lab != IGNORE_INDEX
    truth = patch_lab[keep]

    def scored(feats: torch.Tensor) -> np.ndarray:  # [n, h, w, D] -> predicted class per patch
        return torch.einsum("bhwd,cd->bhwc", l2_normalize(feats.float()), ce).argmax(-1).numpy()

    values = scored(model.vision.forward_values(x))[keep]
    alt = cls_path_features(model, x)
    readouts = {k: (scored(f)[keep] == truth).mean() for k, f in alt.items()}
    broadcast = np.broadcast_to(cls_pred[:, None, None], patch_lab.shape)[keep]
    probe = ridge_probe_accuracy(out.patch_tokens.float(), patch_lab, len(names))
    tokens = scored(out.patch_tokens)[keep]
    ious = [
        ((values == c) & (truth == c)).sum() / max(((values == c) | (truth == c)).sum(), 1)
        for c in range(len(names))
    ]
    model.train()
    return {
        "zs_miou": zs["miou"],
        "cls_acc": float((cls_pred == majority).mean()),
        "patch_acc": float((values == truth).mean()),
        "patch_miou": float(np.mean(ious)),
        "token_acc": float((tokens == truth).mean()),
        "probe_acc": probe,
        "own_value_acc": float(readouts["own_value"]),
        "cls_path_acc": float(readouts["cls_path"]),
        "broadcast_acc": float((broadcast == truth).mean()),
        "cls_path_meanctx_acc": float(readouts["cls_path_meanctx"]),
    }


def cls_path_features(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Alternative readouts of the last block's values, each [n, h, w, D]: the patch's own
    projected value; that value on CLS1's residual path (as if CLS1 attended to the patch
    alone); and the same on the mean CLS1 residual of the batch (no image context)."""
    v = model.vision
    tokens = v.prepare_tokens(x)
    for blk in v.blocks[:-1]:
        tokens = blk(tokens)
    last = v.blocks[-1]
    values = last.ls1(last.attn.values(last.norm1(tokens)))[:, NUM_PREFIX_TOKENS:]  # [n, hw, D]
    g = x.shape[-1] // PATCH

    def through_cls(context: torch.Tensor) -> torch.Tensor:  # context [n or 1, 1, D]
        y = context + values
        return v.norm(y + last.ls2(last.mlp(last.norm2(y))))

    cls_in = tokens[:, :1]
    feats = {
        "own_value": values,
        "cls_path": through_cls(cls_in),
        "cls_path_meanctx": through_cls(cls_in.mean(0, keepdim=True)),
    }
    return {k: f.reshape(len(x), g, g, -1) for k, f in feats.items()}


def ridge_probe_accuracy(tokens: torch.Tensor, patch_lab: np.ndarray, num_classes: int) -> float:
    """tokens [n, h, w, D], patch_lab [n, h, w] -> accuracy on the second half of the
    scenes of a ridge regression onto one-hot classes fitted on the first half."""
    half = len(tokens) // 2
    feats = torch.nn.functional.pad(tokens, (0, 1), value=1.0)  # a bias column

    def rows(part: slice) -> tuple[torch.Tensor, np.ndarray]:
        lab = patch_lab[part]
        keep = torch.from_numpy(lab != IGNORE_INDEX)
        return feats[part][keep], lab[lab != IGNORE_INDEX]

    x_fit, y_fit = rows(slice(0, half))
    x_test, y_test = rows(slice(half, None))
    target = torch.nn.functional.one_hot(torch.from_numpy(y_fit), num_classes).float()
    gram = x_fit.T @ x_fit + 1e-2 * torch.eye(x_fit.shape[1])
    weights = torch.linalg.solve(gram, x_fit.T @ target)  # [D + 1, C]
    return float(((x_test @ weights).argmax(1).numpy() == y_test).mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--train-images", type=int, default=3400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="model init and batch order")
    ap.add_argument("--size", type=int, default=112, help="image side in pixels (multiple of 14)")
    ap.add_argument(
        "--objects",
        default=None,
        help="P(1 object),P(2 objects),… for training and held-out scenes "
        "(default: the dense world's 0.4,0.35,0.25; '1' for one object per scene)",
    )
    ap.add_argument(
        "--freeze-text",
        action="store_true",
        help="keep the text tower at its random init: is the plateau on the image side?",
    )
    ap.add_argument(
        "--pool",
        choices=("cls", "mean"),
        default="cls",
        help="image embedding of the contrastive loss: CLS1 (the paper's) or the mean of "
        "the output patch tokens (a loss that reaches every patch's own residual stream)",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/dense_alignment.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    size = args.size
    world = get_world("dense")
    if args.objects:
        weights = tuple(float(w) for w in args.objects.split(","))
        world = dataclasses.replace(world, count_weights=weights)
    names = list(world.classes)

    print(f"load average {os.getloadavg()}", flush=True)
    images, _, texts = scenes(0, args.train_images, 112, world)
    val_images, val_labels, _ = scenes(1, 300, 112, world)
    if size != 112:  # the generator draws at 112 px or more: downscale, labels by nearest
        images, val_images = (
            F.interpolate(t.float(), size=(size, size), mode="area").round().to(torch.uint8)
            for t in (images, val_images)
        )
        step = 112 / size
        pick = (np.arange(size) * step + step / 2).astype(int)
        val_labels = val_labels[:, pick][:, :, pick]
    patch_lab, majority = patch_labels(val_labels), majority_class(val_labels, len(names))
    seg = seg_dataset(val_images, val_labels, world)
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = train_tokenizer(texts, Path(tmp) / "tok", vocab_size=1000)
        tok = Tokenizer(str(tok_path))
    ids, pad = (torch.tensor(a) for a in tok(texts, 48))

    model = TIPSModel("nano14")
    with torch.no_grad():
        model.temperature.fill_(args.temperature)
    model.temperature.requires_grad_(False)
    if args.freeze_text:
        model.text.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.02)
    rng = np.random.default_rng(args.seed)
    rows, t0, b = [], time.perf_counter(), 32
    # Step 0 is the random-init encoder: the baseline of every column.
    rows.append({"step": 0} | {k: round(v, 4) for k, v in measure(
        model, tok, names, val_images, patch_lab, majority, seg).items()})  # fmt: skip
    print(json.dumps(rows[0]), flush=True)
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(images), b))
        x = images[idx].float() / 255
        flip = torch.rand(b) < 0.5
        x[flip] = x[flip].flip(-1)
        out = model.vision(x)
        img = l2_normalize(out.cls1 if args.pool == "cls" else out.patch_tokens.mean((1, 2)))
        txt = l2_normalize(model.text(ids[idx], pad[idx]))
        logits = img @ txt.T / model.temperature
        target = torch.arange(b)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0:
            row = {"step": step, "loss": round(loss.item(), 4)}
            scores = measure(model, tok, names, val_images, patch_lab, majority, seg)
            row |= {k: round(v, 4) for k, v in scores.items()}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"config": vars(args) | {"out": str(args.out)}, "rows": rows,
              "load_average_end": os.getloadavg()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
