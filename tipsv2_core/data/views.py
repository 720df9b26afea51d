"""Training views: one global crop and M local crops per image (random resized crop + flip).

TIPSv2 uses only random resize, crop and flip (paper §4.1). Crops come out as float
tensors in [0, 1] without mean/std normalisation, like the official preprocessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class ViewConfig:
    global_size: int = 224  # paper: 224 (low-res stage), 448 (high-res stage)
    local_size: int = 98  # paper: 98, then 140
    num_local: int = 6
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5


def _crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop covering `scale` of the area."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_r))
        w = round(math.sqrt(target * ar))
        h = round(math.sqrt(target / ar))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fallback: the largest centred crop within the ratio range (as torchvision does).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float32 in [0, 1], contiguous.

    The bytes are put in channel order first (uint8, a quarter of the float traffic) and
    divided once: the same float32 values as `asarray(float32) / 255`, without the strided
    [H, W, 3] -> [3, H, W] view that made every later copy (collate's stack) slow.
    """
    chw = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    return torch.from_numpy(chw).to(torch.float32).div_(255.0)


def random_resized_crop(
    img: Image.Image,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_p: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    """One augmented view [3, size, size]."""
    box = _crop_box(img.width, img.height, scale, ratio, rng)
    view = img.resize((size, size), Image.BILINEAR, box=box)
    if rng.random() < flip_p:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor(view)


def make_views(
    img: Image.Image, cfg: ViewConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(global [3, G, G], locals [M, 3, L, L]) for one RGB image."""
    g = random_resized_crop(img, cfg.global_size, cfg.global_scale, cfg.ratio, cfg.flip_p, rng)
    locs = [
        random_resized_crop(img, cfg.local_size, cfg.local_scale, cfg.ratio, cfg.flip_p, rng)
        for _ in range(cfg.num_local)
    ]
    empty = torch.empty(0, 3, cfg.local_size, cfg.local_size)
    return g, torch.stack(locs) if locs else empty
