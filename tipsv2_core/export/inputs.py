"""Inputs the parity check feeds to both runtimes: random ones and real-looking ones.

Random inputs exercise the whole numeric range; real-looking ones (synthetic scenes with
objects, edges and flat regions; tokenised captions) are what a deployed model sees. A
batch of texts always holds an all-padding row and a row without padding, the two edge
cases of the masked attention and mean pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tipsv2_core.data.synthetic import MAX_SIZE, MIN_SIZE, generate_scene
from tipsv2_core.text.tokenizer import PAD_ID, Tokenizer

DEFAULT_BATCHES = (1, 8)
SHORT_TEXT_LEN = 16  # a second text length: the graphs' length axis is dynamic


@dataclass(frozen=True)
class InputCase:
    """One named set of graph inputs, e.g. `scenes b8 224x224`."""

    name: str
    feeds: dict[str, torch.Tensor]


def random_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Uniform noise in [0, 1]: [B, 3, H, W] float32."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen)


def scene_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Synthetic scenes (tipsv2_core.data.synthetic) in [0, 1]: [B, 3, H, W] float32.

    Scenes are drawn at the nearest size the generator supports and resized
    bilinearly, as `tipsv2 embed` resizes photos.
    """
    draw = min(max(max(height, width), MIN_SIZE), MAX_SIZE)
    out = []
    for i in range(batch):
        img = Image.fromarray(generate_scene(seed, i, draw).image)
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        out.append(np.asarray(img, np.float32) / 255.0)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def image_cases(
    sizes: Sequence[int], batches: Sequence[int] = DEFAULT_BATCHES, seed: int = 0
) -> list[InputCase]:
    """{random, scenes} × batches × square sizes, plus one non-square random image when
    two sizes are given (H = the first size, W = the last): the height and width axes are
    independent in the graph."""
    cases = []
    for size in sizes:
        for kind, make in (("random", random_images), ("scenes", scene_images)):
            for b in batches:
                images = make(b, size, size, seed + size * 31 + b)
                cases.append(InputCase(f"{kind} b{b} {size}x{size}", {"images": images}))
    if len(sizes) >= 2 and sizes[0] != sizes[-1]:
        h, w = sizes[0], sizes[-1]
        cases.append(InputCase(f"random b2 {h}x{w}", {"images": random_images(2, h, w, seed)}))
    return cases


def _with_edge_rows(ids: np.ndarray) -> np.ndarray:
    """Row 0 all padding, row 1 no padding (when the batch has those rows)."""
    ids = ids.copy()
    if len(ids) >= 2:
        ids[0] = PAD_ID
        ids[1][ids[1] == PAD_ID] = 1 + np.arange(int((ids[1] == PAD_ID).sum())) % 7
    return ids


def random_token_ids(batch: int, length: int, vocab_size: int, seed: int) -> np.ndarray:
    """Uniform ids in [1, vocab) followed by padding to a random length: [B, L] int64."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, size=(batch, length), dtype=np.int64)
    keep = rng.integers(1, length + 1, size=batch)
    ids[np.arange(length)[None, :] >= keep[:, None]] = PAD_ID
    return ids


def caption_token_ids(
    batch: int, length: int, vocab_size: int, seed: int, tokenizer: Tokenizer | None
) -> np.ndarray:
    """Real-looking texts as ids [B, L] int64.

    With a tokenizer: synthetic captions (alt text, medium and long captions) tokenised
    as `tipsv2 embed text` does. Without one: caption-length rows of Zipf-distributed
    ids, the shape of a natural-language id stream.
    """
    if tokenizer is not None:
        texts = []
        for i in range(batch):
            captions = generate_scene(seed, i, MIN_SIZE).captions
            texts.append(list(captions.values())[i % len(captions)])
        ids, _ = tokenizer(texts, pad_to=length)
        return np.minimum(ids, vocab_size - 1)
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.3, size=(batch, length)), vocab_size - 1).astype(np.int64)
    keep = rng.integers(min(4, length), min(40, length) + 1, size=batch)
    ids[np.arange(length)[None, :] >= keep[:, None]] = PAD_ID
    return ids


def text_cases(
    vocab_size: int,
    max_len: int,
    tokenizer: Tokenizer | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    seed: int = 0,
) -> list[InputCase]:
    """{random, captions} × batches × lengths {max_len, 16}; paddings = (ids == 0)."""
    cases = []
    kind_real = "captions" if tokenizer is not None else "zipf"
    for length in dict.fromkeys((max_len, min(SHORT_TEXT_LEN, max_len))):
        for b in batches:
            s = seed + length * 31 + b
            for kind, ids in (
                ("random", random_token_ids(b, length, vocab_size, s)),
                (kind_real, caption_token_ids(b, length, vocab_size, s, tokenizer)),
            ):
                ids = _with_edge_rows(ids)
                feeds = {
                    "ids": torch.from_numpy(ids),
                    "paddings": torch.from_numpy((ids == PAD_ID).astype(np.int32)),
                }
                cases.append(InputCase(f"{kind} b{b} L{length}", feeds))
    return cases
