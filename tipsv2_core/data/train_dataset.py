"""Random-access training samples from tar shards, with an exactly resumable order.

The shards are indexed once (tar headers only: member offsets and sizes), so a sample is
one seek and one read. The order is a pure function of (seed, stage, epoch) and every
sample's augmentation RNG is seeded by (seed, stage, epoch, index): step k of a run sees
the same images, crops, masks and captions whether or not the run was interrupted, and
whichever worker process produced them.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from tipsv2_core.data.caption_sampling import sample_captions
from tipsv2_core.data.layout import local_path
from tipsv2_core.data.masking import make_mask
from tipsv2_core.data.shards import open_dataset
from tipsv2_core.data.views import ViewConfig, make_views
from tipsv2_core.text.tokenizer import Tokenizer

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass(frozen=True)
class MemberRef:
    shard: str  # path relative to the dataset directory
    offset: int  # byte offset of the member's data in the tar file
    size: int


@dataclass(frozen=True)
class SampleRef:
    key: str
    image: MemberRef
    meta: MemberRef


def index_shards(root: Path, shards: list[str]) -> dict[str, SampleRef]:
    """key -> where its image and json live, from the tar headers of `shards`."""
    found: dict[str, dict[str, MemberRef]] = {}
    for shard in shards:
        path = root / shard
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, _, ext = m.name.partition(".")
                    found.setdefault(key, {})[ext] = MemberRef(shard, m.offset_data, m.size)
        except (tarfile.TarError, OSError) as e:
            raise ValueError(f"{path}: unreadable shard ({e})") from None
    refs = {}
    for key, members in found.items():
        image = next((members[e] for e in IMAGE_EXTS if e in members), None)
        if image is None or "json" not in members:
            shard = next(iter(members.values())).shard
            raise ValueError(f"{root / shard}: sample {key!r} lacks an image or its .json")
        refs[key] = SampleRef(key, image, members["json"])
    return refs


def manifest_rows(root: str | Path, split: str | None) -> list[dict]:
    """Manifest rows (optionally of one split), in file order, of a complete dataset."""
    rows = open_dataset(root).manifest.to_pylist()
    return [r for r in rows if split is None or r["split"] == split]


class TrainDataset(Dataset):
    """Item (stage, epoch, index) -> one training sample as tensors (see `__getitem__`)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        views: ViewConfig,
        mask_ratio: float,
        mask_mode: str,
        caption_strategy: str,
        tokenizer_path: str | Path,
        text_max_len: int,
        seed: int,
        patch_size: int = 14,
    ) -> None:
        self.root = local_path(root)
        rows = manifest_rows(self.root, split)
        if not rows:
            raise ValueError(f"{self.root}: split {split!r} is empty")
        refs = index_shards(self.root, sorted({r["shard"] for r in rows}))
        missing = [r["key"] for r in rows if r["key"] not in refs]
        if missing:
            raise ValueError(f"{self.root}: manifest keys missing from the shards: {missing[:5]}")
        self.samples = [refs[r["key"]] for r in rows]
        self.views, self.mask_ratio, self.mask_mode = views, mask_ratio, mask_mode
        self.caption_strategy, self.text_max_len, self.seed = caption_strategy, text_max_len, seed
        self.tokenizer_path = str(tokenizer_path)
        self.grid = views.global_size // patch_size
        self._tokenizer: Tokenizer | None = None  # loaded lazily in each worker process
        self._files: dict[str, io.BufferedReader] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, ref: MemberRef) -> bytes:
        f = self._files.get(ref.shard)
        if f is None:
            f = self._files[ref.shard] = open(self.root / ref.shard, "rb")  # noqa: SIM115
        f.seek(ref.offset)
        return f.read(ref.size)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_tokenizer": None}  # handles stay per process

    def load(self, index: int) -> tuple[Image.Image, dict]:
        ref = self.samples[index]
        try:
            image = Image.open(io.BytesIO(self._read(ref.image))).convert("RGB")
            meta = json.loads(self._read(ref.meta))
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{self.root / ref.image.shard}: sample {ref.key!r} is unreadable ({e})"
            ) from None
        return image, meta

    def __getitem__(self, item: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        stage, epoch, index = item
        rng = np.random.default_rng([self.seed, stage, epoch, index])
        image, meta = self.load(index)
        global_crop, local_crops = make_views(image, self.views, rng)
        mask = make_mask(self.grid, self.grid, self.mask_ratio, self.mask_mode, rng)
        text1, text2 = sample_captions(meta, self.caption_strategy, rng)
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self.tokenizer_path, max_len=self.text_max_len)
        ids, pad = self._tokenizer([text1] + ([text2] if text2 is not None else []))
        out = {
            "global_crops": global_crop,
            "local_crops": local_crops,
            "masks": torch.from_numpy(mask),
            "cls1_ids": torch.from_numpy(ids[0]),
            "cls1_pad": torch.from_numpy(pad[0]),
        }
        if text2 is not None:
            out["cls2_ids"], out["cls2_pad"] = torch.from_numpy(ids[1]), torch.from_numpy(pad[1])
        return out


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class ResumableBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Endless batches of (stage, epoch, index); batch k is a pure function of k.

    Each epoch is a fresh permutation seeded by (seed, stage, epoch); incomplete tail
    batches are dropped. With `world` workers, worker `rank` takes its own slice of every
    global batch, so no sample is seen twice per epoch across workers.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        stage: int = 0,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.per_epoch = n // (batch_size * world)
        if self.per_epoch == 0:
            raise ValueError(
                f"the dataset has {n} samples, fewer than one global batch of {batch_size * world}"
            )
        self.n, self.batch_size, self.seed, self.stage = n, batch_size, seed, stage
        self.start, self.rank, self.world = start, rank, world
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, permutation) cache

    def batch(self, k: int) -> list[tuple[int, int, int]]:
        epoch, j = divmod(k, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (
                epoch,
                np.random.default_rng([self.seed, self.stage, epoch]).permutation(self.n),
            )
        perm = self._perm[1]
        lo = (j * self.world + self.rank) * self.batch_size
        return [(self.stage, epoch, int(i)) for i in perm[lo : lo + self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1

    def __len__(self) -> int:  # endless; DataLoader only needs this for its own bookkeeping
        return 2**62
