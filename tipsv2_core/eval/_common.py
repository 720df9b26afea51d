"""What the evaluators share: device and mode handling, image loading, batched embedding."""

from __future__ import annotations

import contextlib
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from tipsv2_core.models.tips import TIPSModel, l2_normalize
from tipsv2_core.text.tokenizer import Tokenizer

T = TypeVar("T")
R = TypeVar("R")
CLS_CHOICES = ("cls1", "cls2")


def resolve_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to evaluate on: `device`, or the model's. The model is moved there."""
    current = next(model.parameters()).device
    if device is None:
        return current
    device = torch.device(device)
    if device != current:
        model.to(device)
    return device


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """model.eval() for the duration, restoring the previous train/eval flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def check_cls(cls: str) -> str:
    if cls not in CLS_CHOICES:
        raise ValueError(f"cls must be one of {CLS_CHOICES}, got {cls!r}")
    return cls


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [3, H, W] float32 in [0, 1] (no mean/std normalisation)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def square_image(img: Image.Image, size: int) -> torch.Tensor:
    """Resized to size² (bilinear, PIL), as `tipsv2_core.inference.load_image` does."""
    return pil_to_tensor(img.convert("RGB").resize((size, size), Image.BILINEAR))


def check_image_size(model: TIPSModel, size: int) -> None:
    if size % model.vision.patch_size:
        raise ValueError(f"image_size {size} is not a multiple of {model.vision.patch_size}")


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 0) -> Iterator[R]:
    """fn over items, in order; with workers > 0 in threads, at most 2×workers ahead.

    Image decoding and PIL resizing release the GIL, so threads overlap them with the
    model's forward pass without pickling the datasets' lazy loaders.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def embed_texts(
    model: TIPSModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised text embeddings [N, D] (float32, on `device`).

    Texts are sorted by token length and each batch is padded to its own longest text
    (the text tower is padding-invariant), then the rows are put back in input order.
    """
    lengths = [min(len(t), tokenizer.max_len) for t in tokenizer.encode(list(texts))]
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(texts), model.text.cfg.width, device=device)
    for idx in batched(order, batch_size):
        chunk = [texts[i] for i in idx]
        ids, pads = tokenizer(chunk, pad_to=max(1, max(lengths[i] for i in idx)))
        emb = model.text(torch.from_numpy(ids).to(device), torch.from_numpy(pads).to(device))
        out[torch.as_tensor(idx, device=device)] = l2_normalize(emb.float())
    return out


def embed_image_dataset(
    model: TIPSModel,
    loaders: Sequence[Callable[[], Image.Image]],
    *,
    image_size: int,
    cls: str,
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "images",
) -> torch.Tensor:
    """L2-normalised CLS1 or CLS2 embeddings [N, D] (float32, on `device`) of N images."""
    check_cls(cls)
    check_image_size(model, image_size)
    out = torch.empty(len(loaders), model.vision.embed_dim, device=device)
    tensors = ordered_map(lambda load: square_image(load(), image_size), loaders, num_workers)
    with progress_bar(len(loaders), desc, progress) as bar:
        start = 0
        while start < len(loaders):
            batch = [next(tensors) for _ in range(min(batch_size, len(loaders) - start))]
            res = model.vision(torch.stack(batch).to(device))
            out[start : start + len(batch)] = l2_normalize(getattr(res, cls).float())
            start += len(batch)
            bar.update(len(batch))
    return out


_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_safe(name: str) -> str:
    """A class name usable inside a metric key (MLflow allows [A-Za-z0-9_-. /])."""
    return _METRIC_UNSAFE.sub("_", name)
