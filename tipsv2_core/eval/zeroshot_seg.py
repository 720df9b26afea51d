"""Zero-shot semantic segmentation: the official TIPS notebook's protocol (method brief §4).

Per image:
1. resize so the short side is `eval_size` (bicubic, PIL, aspect kept, long side
   `int(long * eval_size / short)`), scale to [0, 1], no mean/std normalisation;
2. `mode="slide"`: windows of `window`² with stride `stride` (the notebook's arithmetic,
   see `slide_windows`); each window, bicubically resized up to a multiple of the patch
   size if needed, gives patch features from `model.vision.forward_values` (MaskCLIP
   values trick), L2-normalised, scored by cosine against the class embeddings, upsampled
   bilinearly to the window size, softmaxed over classes (no temperature), accumulated
   and divided by the overlap counts. `mode="whole"`: the same on the full image as one
   window, without softmax;
3. upsample bilinearly to the label size, argmax, add to the confusion matrix.

Windows of the same size are batched through the model together, across images.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tipsv2_core.eval._common import (
    eval_mode,
    metric_safe,
    ordered_map,
    pil_to_tensor,
    progress_bar,
    resolve_device,
)
from tipsv2_core.eval.datasets import IGNORE_INDEX, SegDataset, SegSample
from tipsv2_core.eval.metrics import miou, new_confusion, pixel_accuracy, update_confusion
from tipsv2_core.eval.prompts import TCL_TEMPLATES, class_text_embeddings
from tipsv2_core.finite import check_finite
from tipsv2_core.models.tips import TIPSModel, l2_normalize
from tipsv2_core.text.tokenizer import Tokenizer

MODES = ("slide", "whole")
Window = tuple[int, int, int, int]  # y1, y2, x1, x2 (end exclusive)
# Upsampling C score maps to a large label map at once can take gigabytes; classes are
# upsampled in chunks of at most this many output elements, keeping a running argmax.
_UPSAMPLE_ELEMS = 1 << 25


def short_side_resize(img: Image.Image, size: int) -> Image.Image:
    """Short side to `size` (bicubic), long side `int(long * size / short)`, aspect kept."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(h * size / w)
    else:
        new_w, new_h = int(w * size / h), size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BICUBIC)


def slide_windows(height: int, width: int, window: int, stride: int) -> list[Window]:
    """The notebook's (mmseg's) sliding windows over an H×W image, row-major.

    h_grids = max(H - window + stride - 1, 0) // stride + 1 (same for w); window (i, j)
    starts at (i·stride, j·stride), is clipped to the image, then shifted back so it keeps
    its full size where the image allows. An image smaller than `window` is one window.
    """
    h_grids = max(height - window + stride - 1, 0) // stride + 1
    w_grids = max(width - window + stride - 1, 0) // stride + 1
    out = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2 = min(i * stride + window, height)
            x2 = min(j * stride + window, width)
            out.append((max(y2 - window, 0), y2, max(x2 - window, 0), x2))
    return out


def _round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def window_scores(model: TIPSModel, crops: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """crops [B, 3, h, w] -> patch-level cosine scores [B, C, h', w'] (h' = ⌈h/14⌉).

    Crops whose sides are not multiples of the patch size are first resized bicubically
    up to the next multiple.
    """
    p = model.vision.patch_size
    h, w = crops.shape[-2:]
    size = (_round_up(h, p), _round_up(w, p))
    if size != (h, w):
        crops = F.interpolate(crops, size=size, mode="bicubic", align_corners=False)
    feats = l2_normalize(model.vision.forward_values(crops).float())  # [B, h', w', D]
    # einsum hands back a channels-last view; bilinear upsampling of a contiguous NCHW
    # tensor to the window size is several times faster on CPU.
    return torch.einsum("bhwd,cd->bchw", feats, class_emb.float()).contiguous()


@dataclass
class _Job:
    """One image on its way through the windows, the model and the accumulation."""

    image: torch.Tensor  # [3, H, W] after the short-side resize
    windows: list[Window]
    key: str = ""
    label: np.ndarray | None = None
    scores: list[torch.Tensor | None] = field(default_factory=list)  # low-res, per window
    remaining: int = 0

    def __post_init__(self) -> None:
        self.scores = [None] * len(self.windows)
        self.remaining = len(self.windows)


def _run_batch(
    model: TIPSModel,
    items: list[tuple[_Job, int]],
    class_emb: torch.Tensor,
    device: torch.device,
) -> None:
    """Pushes (job, window index) items through the model, crops of one size at a time."""
    by_size: dict[tuple[int, int], list[tuple[_Job, int]]] = {}
    for job, k in items:
        y1, y2, x1, x2 = job.windows[k]
        by_size.setdefault((y2 - y1, x2 - x1), []).append((job, k))
    for group in by_size.values():
        crops = torch.stack(
            [job.image[:, y1:y2, x1:x2] for job, k in group for y1, y2, x1, x2 in [job.windows[k]]]
        )
        scores = window_scores(model, crops.to(device, non_blocking=True), class_emb)
        for (job, k), s in zip(group, scores, strict=True):
            job.scores[k] = s
            job.remaining -= 1


def _accumulate(job: _Job, softmax: bool) -> torch.Tensor:
    """The job's window scores upsampled, (softmaxed,) summed and averaged: [C, H, W]."""
    first = job.scores[0]
    assert first is not None
    h, w = job.image.shape[-2:]
    if len(job.windows) == 1 and job.windows[0] == (0, h, 0, w):  # whole, or one window
        up = F.interpolate(first[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return up.softmax(dim=0) if softmax else up
    acc = torch.zeros(first.shape[0], h, w, device=first.device)
    count = torch.zeros(h, w, device=first.device)
    for (y1, y2, x1, x2), s in zip(job.windows, job.scores, strict=True):
        up = F.interpolate(s[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
        up = up[0].softmax(dim=0) if softmax else up[0]
        acc[:, y1:y2, x1:x2] += up
        count[y1:y2, x1:x2] += 1
    return acc.div_(count)


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """scores [C, H, W] -> argmax over classes after bilinear upsampling to size: [h, w].

    Classes are upsampled in chunks with a running maximum, which equals the argmax of
    the full upsampled tensor (first maximum wins) without holding C × h × w at once.
    """
    check_finite(scores, "segmentation scores")
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores.argmax(dim=0)
    chunk = max(1, _UPSAMPLE_ELEMS // (size[0] * size[1]))
    best_val = best_idx = None
    for c0 in range(0, scores.shape[0], chunk):
        up = F.interpolate(
            scores[None, c0 : c0 + chunk], size=size, mode="bilinear", align_corners=False
        )[0]
        val, idx = up.max(dim=0)
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + c0, best_idx)
    assert best_idx is not None
    return best_idx


def _check_options(mode: str, window: int, stride: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would leave pixels unscored")


def _windows(image: torch.Tensor, mode: str, window: int, stride: int) -> list[Window]:
    h, w = image.shape[-2:]
    return slide_windows(h, w, window, stride) if mode == "slide" else [(0, h, 0, w)]


def prepare_image(img: Image.Image, eval_size: int) -> torch.Tensor:
    """PIL image -> [3, H, W] in [0, 1] with the short side at `eval_size`."""
    return pil_to_tensor(short_side_resize(img.convert("RGB"), eval_size))


@torch.inference_mode()
def predict_scores(
    model: TIPSModel,
    image: torch.Tensor,
    class_emb: torch.Tensor,
    *,
    mode: str = "slide",
    window: int = 448,
    stride: int = 336,
    batch_size: int = 8,
) -> torch.Tensor:
    """Class scores [C, H, W] of one prepared image [3, H, W] (on the class_emb device).

    slide: averaged per-window softmax probabilities; whole: raw cosine scores.
    """
    _check_options(mode, window, stride)
    device = class_emb.device
    job = _Job(image, _windows(image, mode, window, stride))
    items = [(job, k) for k in range(len(job.windows))]
    for s in range(0, len(items), batch_size):
        _run_batch(model, items[s : s + batch_size], class_emb, device)
    return _accumulate(job, softmax=mode == "slide")


def pred_dtype(num_classes: int) -> type:
    """uint8 while every class index fits below the ignore value 255, else uint16."""
    return np.uint8 if num_classes <= IGNORE_INDEX else np.uint16


@torch.inference_mode()
def evaluate(
    model: TIPSModel,
    tokenizer: Tokenizer | None,
    dataset: SegDataset,
    *,
    mode: str = "slide",
    eval_size: int = 448,
    window: int = 448,
    stride: int = 336,
    templates: Sequence[str] = TCL_TEMPLATES,
    class_embeddings: torch.Tensor | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    on_prediction: Callable[[str, np.ndarray], None] | None = None,
) -> dict[str, float]:
    """Zero-shot mIoU of `model` on `dataset` -> {miou, pixel_acc, iou/<class>}.

    class_embeddings [C, D] replace the prompt embeddings (then `tokenizer` may be None).
    batch_size counts windows per forward pass. on_prediction(key, pred) receives each
    image's label map [H, W] at label size (uint8, or uint16 beyond 255 classes), in
    dataset order. `iou/<class>` is reported for classes with a union > 0 only (the others
    have no IoU), class names made metric-safe. Scores are fractions in [0, 1].
    """
    _check_options(mode, window, stride)
    dev = resolve_device(model, device)
    num_classes = len(dataset.class_names)
    with eval_mode(model):
        if class_embeddings is None:
            if tokenizer is None:
                raise ValueError("a tokenizer is needed unless class_embeddings are given")
            class_embeddings = class_text_embeddings(
                model, tokenizer, dataset.class_names, templates
            )
        class_emb = class_embeddings.to(dev)
        if class_emb.shape[0] != num_classes:
            raise ValueError(f"{class_emb.shape[0]} class embeddings for {num_classes} classes")
        conf = new_confusion(num_classes)
        out_dtype = pred_dtype(num_classes)

        def prepare(sample: SegSample) -> _Job:
            image = prepare_image(sample.load_image(), eval_size)
            label = np.asarray(sample.load_label())
            return _Job(image, _windows(image, mode, window, stride), sample.key, label)

        def finish(job: _Job) -> None:
            assert job.label is not None
            scores = _accumulate(job, softmax=mode == "slide")
            pred = upsample_argmax(scores, job.label.shape[-2:]).cpu().numpy()
            pred = pred.astype(out_dtype)
            update_confusion(conf, pred, job.label)
            if on_prediction is not None:
                on_prediction(job.key, pred)
            bar.update(1)

        jobs: deque[_Job] = deque()
        pending: list[tuple[_Job, int]] = []
        with progress_bar(len(dataset), f"zeroshot_seg {dataset.name}", progress) as bar:
            for job in ordered_map(prepare, dataset.samples, num_workers):
                jobs.append(job)
                for k in range(len(job.windows)):
                    pending.append((job, k))
                    if len(pending) == batch_size:
                        _run_batch(model, pending, class_emb, dev)
                        pending = []
                while jobs and jobs[0].remaining == 0:
                    finish(jobs.popleft())
            if pending:
                _run_batch(model, pending, class_emb, dev)
            while jobs:
                finish(jobs.popleft())

    mean, iou = miou(conf)
    metrics = {"miou": mean, "pixel_acc": pixel_accuracy(conf)}
    for name, value in zip(dataset.class_names, iou, strict=True):
        if not np.isnan(value):
            metrics[f"iou/{metric_safe(name)}"] = float(value)
    return metrics
