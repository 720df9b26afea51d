"""Linear-probe semantic segmentation on frozen patch tokens.

Images of both splits are resized to `image_size`² (bilinear) and encoded once by the
frozen vision tower; its final-norm patch tokens (`model.vision(images).patch_tokens`)
are the features. A linear head D -> C (a 1×1 convolution, written as a Linear over
tokens) is trained with AdamW and cross-entropy on the training labels downsampled to
the patch grid (nearest, 255 ignored), on random minibatches of the cached labelled
tokens. Validation logits are upsampled bilinearly to each label map's size and
argmaxed. Everything random comes from `seed`, so a run is repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tipsv2_core.eval._common import (
    check_image_size,
    eval_mode,
    ordered_map,
    progress_bar,
    resolve_device,
    square_image,
)
from tipsv2_core.eval.datasets import IGNORE_INDEX, SegDataset, SegSample
from tipsv2_core.eval.metrics import miou, new_confusion, pixel_accuracy, update_confusion
from tipsv2_core.eval.zeroshot_seg import upsample_argmax
from tipsv2_core.models.tips import TIPSModel


def _encoded(
    model: TIPSModel,
    dataset: SegDataset,
    image_size: int,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    progress: bool,
    desc: str,
) -> Iterator[tuple[torch.Tensor, list[np.ndarray]]]:
    """Batches of (patch tokens [B, h, w, D] float32 on device, label maps [H, W])."""

    def load(sample: SegSample) -> tuple[torch.Tensor, np.ndarray]:
        return square_image(sample.load_image(), image_size), np.asarray(sample.load_label())

    items = ordered_map(load, dataset.samples, num_workers)
    n = len(dataset)
    with progress_bar(n, desc, progress) as bar:
        for start in range(0, n, batch_size):
            batch = [next(items) for _ in range(min(batch_size, n - start))]
            images = torch.stack([im for im, _ in batch]).to(device)
            with torch.no_grad():
                tokens = model.vision(images).patch_tokens.float()
            yield tokens, [lab for _, lab in batch]
            bar.update(len(batch))


def grid_labels(label: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """A label map [H, W] downsampled to the patch grid by nearest neighbour: [h, w]."""
    lab = torch.from_numpy(np.asarray(label, dtype=np.int64))[None, None].float()
    return F.interpolate(lab, size=grid, mode="nearest")[0, 0].long()


def _cosine_lr(step: int, steps: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / steps))


def evaluate(
    model: TIPSModel,
    tokenizer: object | None,
    dataset: SegDataset,
    *,
    train: SegDataset,
    image_size: int = 224,
    steps: int = 300,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_tokens: int = 4096,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Trains a linear head on `train`, evaluates on `dataset` -> {miou, pixel_acc}.

    lr follows a cosine decay to 0 over `steps`; each step samples `batch_tokens`
    labelled tokens (with replacement) from the cached training features. `tokenizer` is
    unused (the common evaluator signature).
    """
    del tokenizer
    if list(train.class_names) != list(dataset.class_names):
        only = sorted(set(train.class_names) ^ set(dataset.class_names))
        raise ValueError(
            f"{train.name} and {dataset.name} have different class lists "
            f"({len(train.class_names)} vs {len(dataset.class_names)}; in one only: {only[:5]})"
        )
    check_image_size(model, image_size)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    num_classes = len(dataset.class_names)
    dev = resolve_device(model, device)
    with eval_mode(model):
        feats, labels = [], []
        for tokens, maps in _encoded(
            model, train, image_size, dev, batch_size, num_workers, progress, "linear_seg train"
        ):
            grid = tuple(tokens.shape[1:3])
            lab = torch.stack([grid_labels(m, grid) for m in maps]).to(dev)
            keep = lab != IGNORE_INDEX
            feats.append(tokens[keep])
            labels.append(lab[keep])
        x, y = torch.cat(feats), torch.cat(labels)
        if len(y) == 0:
            raise ValueError(f"{train.name}: no labelled patch in the training split")
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(f"{train.name}: label values outside [0, {num_classes})")

        gen = torch.Generator().manual_seed(seed)
        head = nn.utils.skip_init(nn.Linear, x.shape[1], num_classes)  # global RNG untouched
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
            head.bias.zero_()
        head.to(dev)
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps))
        with progress_bar(steps, "linear_seg head", progress) as bar:
            for _ in range(steps):
                idx = torch.randint(len(y), (batch_tokens,), generator=gen).to(dev)
                loss = F.cross_entropy(head(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
        del x, y, feats, labels

        conf = new_confusion(num_classes)
        for tokens, maps in _encoded(
            model,
            dataset,
            image_size,
            dev,
            batch_size,
            num_workers,
            progress,
            f"linear_seg {dataset.name}",
        ):
            with torch.no_grad():
                logits = head(tokens).permute(0, 3, 1, 2)  # [B, C, h, w]
            for lg, lab in zip(logits, maps, strict=True):
                pred = upsample_argmax(lg, lab.shape[-2:]).cpu().numpy()
                update_confusion(conf, pred, lab)
    mean, _ = miou(conf)
    return {"miou": mean, "pixel_acc": pixel_accuracy(conf)}
