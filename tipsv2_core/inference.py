"""Embedding images and texts the way the official inference scripts do.

Images: resized to image_size² (bilinear, PIL), scaled to [0, 1], no mean/std
normalisation. Texts: lowercased, max length 64. Embeddings are L2-normalised with the
norm clipped at 1e-3; patch tokens are the raw final-norm tokens.

`precision` (fp32, the default, or bf16) is how a PyTorch model computes: bf16 runs its
matmuls in bf16 under autocast over the fp32 weights (tipsv2_core/precision.py); outputs
are fp32 either way. `inference_precision` is the same switch for any code that calls a
model (the evaluators, `tipsv2 segment`/`features`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tipsv2_core import precision as _precision
from tipsv2_core.atomic import atomic_file
from tipsv2_core.finite import check_finite
from tipsv2_core.models.text import TextEncoder
from tipsv2_core.models.tips import l2_normalize
from tipsv2_core.models.vision import VisionTransformer
from tipsv2_core.text.tokenizer import Tokenizer


def load_image(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """An image file as a [3, S, S] float tensor in [0, 1]."""
    try:
        with Image.open(path) as img:
            return image_tensor(img, image_size)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: cannot read image ({e})") from None
    except Image.DecompressionBombError as e:  # a header claiming billions of pixels
        raise ValueError(f"{path}: refused, a decompression bomb ({e})") from None


def image_tensor(img: Image.Image, image_size: int) -> torch.Tensor:
    """An opened image as a [3, S, S] float tensor in [0, 1]: RGB, bilinear resize to S×S."""
    img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


@contextlib.contextmanager
def inference_precision(model: torch.nn.Module, precision: str) -> Iterator[None]:
    """Inside, the image and text towers of `model` (a TIPSModel or one tower) compute
    their forward passes in `precision` (fp32 or bf16); what callers do with the outputs
    (similarities, probes, argmax) stays fp32. The previous setting is restored after.

    bf16 needs a PyTorch model: an ONNX export runs in the precision it was exported in
    (its .int8.onnx / .fp16.onnx files), so asking it for bf16 is an error, not a no-op.
    """
    if precision not in _precision.INFERENCE_PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of "
            f"{', '.join(_precision.INFERENCE_PRECISIONS)}"
        )
    towers = [m for m in model.modules() if isinstance(m, VisionTransformer | TextEncoder)]
    if precision != "fp32" and not towers:
        raise ValueError(
            f"precision {precision} needs a PyTorch checkpoint; an ONNX export runs in its "
            "own precision (choose its .int8.onnx or .fp16.onnx file instead)"
        )
    saved = [t.compute_precision for t in towers]
    for t in towers:
        t.compute_precision = precision
    try:
        yield
    finally:
        for t, p in zip(towers, saved, strict=True):
            t.compute_precision = p


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.inference_mode()
def embed_images(
    model: VisionTransformer,
    paths: Sequence[str | os.PathLike],
    image_size: int = 448,
    batch_size: int = 8,
    patch_tokens: bool = False,
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """{'cls1': [N, D], 'cls2': [N, D], ('patch_tokens': [N, h, w, D])} for image files."""
    if image_size <= 0 or batch_size <= 0:
        raise ValueError(
            f"--image-size ({image_size}) and --batch-size ({batch_size}) must be positive"
        )
    if image_size % model.patch_size:
        raise ValueError(f"--image-size {image_size} is not a multiple of {model.patch_size}")
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[np.ndarray]] = {"cls1": [], "cls2": [], "patch_tokens": []}
    for chunk in _batches(list(paths), batch_size):
        images = torch.stack([load_image(p, image_size) for p in chunk]).to(device)
        emb = embed_pixels(model, images, patch_tokens, f"{chunk[0]}…", precision)
        for k, v in emb.items():
            out[k].append(v)
    return {k: np.concatenate(v) for k, v in out.items() if v}


@torch.inference_mode()
def embed_pixels(
    model: VisionTransformer,
    images: torch.Tensor,
    patch_tokens: bool = False,
    source: str = "the batch",
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """Prepared images [B, 3, S, S] in [0, 1] -> {'cls1': [B, D], 'cls2': [B, D],
    ('patch_tokens': [B, S/14, S/14, D])}, the CLS tokens L2-normalised. Non-finite
    outputs raise NonFiniteError naming `source`."""
    with inference_precision(model, precision):
        res = model(images)
    for name in ("cls1", "cls2", *(("patch_tokens",) if patch_tokens else ())):
        check_finite(getattr(res, name), f"image embeddings ({name}) of {source}")
    out = {
        "cls1": l2_normalize(res.cls1).float().cpu().numpy(),
        "cls2": l2_normalize(res.cls2).float().cpu().numpy(),
    }
    if patch_tokens:
        out["patch_tokens"] = res.patch_tokens.float().cpu().numpy()
    return out


@torch.inference_mode()
def embed_texts(
    model: TextEncoder,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    precision: str = "fp32",
) -> np.ndarray:
    """L2-normalised text embeddings [N, D]."""
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for chunk in _batches(list(texts), batch_size):
        ids, paddings = tokenizer(chunk)
        with inference_precision(model, precision):
            emb = model(torch.from_numpy(ids).to(device), torch.from_numpy(paddings).to(device))
        check_finite(emb, f"text embeddings of {chunk[0]!r}…")
        rows.append(l2_normalize(emb).float().cpu().numpy())
    return np.concatenate(rows)


def save_embeddings(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], inputs: Sequence[str]
) -> Path:
    """Writes embeddings as `.npz` (arrays + `inputs`) or `.json` (nested lists)."""
    path = Path(path)
    if path.suffix not in (".npz", ".json"):
        raise ValueError(f"{path}: output must end in .npz or .json")
    with atomic_file(path) as tmp:  # a failed write leaves no half-written file
        if path.suffix == ".npz":
            np.savez(tmp, inputs=np.asarray(list(inputs), dtype=str), **arrays)
        else:
            doc = {"inputs": list(inputs), **{k: v.tolist() for k, v in arrays.items()}}
            tmp.write_text(json.dumps(doc))
    return path
