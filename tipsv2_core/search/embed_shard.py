"""One dataset shard -> one Parquet part of CLS1/CLS2 embeddings (the unit of work that
`tipsv2 embed dataset` spreads over Ray Data workers, and the unit a rerun skips).

Images are prepared as `tipsv2 embed image` prepares files (RGB, bilinear resize to
S×S, [0, 1]) and embedded by `inference.embed_pixels`, so a row equals what `tipsv2
embed image` gives for the same image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from tipsv2_core.data.shards import iter_samples
from tipsv2_core.inference import embed_pixels, image_tensor
from tipsv2_core.models.vision import VisionTransformer
from tipsv2_core.search.store import write_part


def embed_shard(
    vision: VisionTransformer,
    dataset: str | os.PathLike,
    shard: str,
    out: str | os.PathLike,
    digest: str,
    *,
    image_size: int,
    batch_size: int = 16,
    split: str | None = None,
    caption: str | None = None,
) -> int:
    """Embeds the samples of `shard` (of `split`, or all) into `out/parts/`; returns rows.

    vision: a VisionTransformer or its ONNX Runtime stand-in. Each batch is [B, 3, S, S];
    cls1 / cls2 come out L2-normalised [B, D]. Non-finite outputs raise NonFiniteError.
    """
    keys: list[str] = []
    splits: list[str] = []
    captions: list[str] = []
    cls1: list[np.ndarray] = []
    cls2: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            out_ = embed_pixels(vision, torch.stack(batch), source=f"{shard} near {keys[-1]}")
            cls1.append(out_["cls1"])
            cls2.append(out_["cls2"])
            batch.clear()

    for sample in iter_samples(dataset, split=split, shards=[shard]):
        keys.append(sample.key)
        splits.append(str(sample.meta.get("split", "")))
        if caption is not None:
            captions.append(str(sample.meta.get(caption, "")))
        batch.append(image_tensor(sample.image, image_size))
        if len(batch) >= batch_size:
            flush()
    flush()
    dim = int(vision.embed_dim)
    empty = np.zeros((0, dim), np.float32)
    write_part(
        Path(out), shard, digest, keys, splits,
        np.concatenate(cls1) if cls1 else empty, np.concatenate(cls2) if cls2 else empty,
        captions if caption is not None else None,
    )  # fmt: skip
    return len(keys)
