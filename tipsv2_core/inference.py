"""Embedding images and texts the way the official inference scripts do.

Images: resized to image_size² (bilinear, PIL), scaled to [0, 1], no mean/std
normalisation. Texts: lowercased, max length 64. Embeddings are L2-normalised with the
norm clipped at 1e-3; patch tokens are the raw final-norm tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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
        for k, v in embed_pixels(model, images, patch_tokens, f"{chunk[0]}…").items():
            out[k].append(v)
    return {k: np.concatenate(v) for k, v in out.items() if v}


@torch.inference_mode()
def embed_pixels(
    model: VisionTransformer,
    images: torch.Tensor,
    patch_tokens: bool = False,
    source: str = "the batch",
) -> dict[str, np.ndarray]:
    """Prepared images [B, 3, S, S] in [0, 1] -> {'cls1': [B, D], 'cls2': [B, D],
    ('patch_tokens': [B, S/14, S/14, D])}, the CLS tokens L2-normalised. Non-finite
    outputs raise NonFiniteError naming `source`."""
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
    model: TextEncoder, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """L2-normalised text embeddings [N, D]."""
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for chunk in _batches(list(texts), batch_size):
        ids, paddings = tokenizer(chunk)
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
