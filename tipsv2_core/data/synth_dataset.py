"""A synthetic dataset directory: scenes -> shards + manifest + card, atomically.

Sample `i` of seed `s` has key `s{s}-{i:08d}`; its split is a fixed function of a hash
of the key, so adding images never moves earlier ones between splits. Generation runs in
a process pool when `workers > 1`; results are consumed in index order, so the output is
byte-identical whatever the number of workers, and between runs: the card holds no time
stamp, so a DVC stage that regenerates the same parameters gets the same content hash.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tipsv2_core.atomic import COMPLETE_FILE, commit_directory, temporary_sibling
from tipsv2_core.data.card import CardBuilder
from tipsv2_core.data.classes import IGNORE_INDEX
from tipsv2_core.data.layout import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    REJECTED_FILE,
    SHARDS_DIR,
    DatasetError,
    local_path,
    write_json,
    write_manifest,
    write_rejected,
)
from tipsv2_core.data.shards import ShardWriter, encode_sample
from tipsv2_core.data.synthetic import check_image_size, generate_scene
from tipsv2_core.data.worlds import (
    DEFAULT_NUM_IMAGES,  # noqa: F401 (re-exported: the dataset's defaults live with it)
    DEFAULT_SPLITS,
    DEFAULT_WORLD,
    get_world,
)

GENERATOR = "tipsv2_core.data.synthetic"
GENERATOR_VERSION = 2  # bump when the same (seed, index, world) would draw another scene
SPLIT_NAMES = ("train", "val", "test")
SOURCE = "synthetic"
MAX_SHARD_BYTES = 1 << 30


def sample_key(seed: int, index: int) -> str:
    return f"s{seed}-{index:08d}"


def assign_split(key: str, splits: Mapping[str, float]) -> str:
    """The split of a key: a uniform number from its SHA-256 against cumulative ratios."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    edge = 0.0
    for name, ratio in splits.items():
        edge += ratio
        if u < edge:
            return name
    return next(reversed(splits))


def _normalise_splits(splits: Sequence[float] | Mapping[str, float]) -> dict[str, float]:
    if isinstance(splits, Mapping):
        out = {str(k): float(v) for k, v in splits.items()}
    else:
        if len(splits) != len(SPLIT_NAMES):
            raise ValueError(f"splits must be {len(SPLIT_NAMES)} ratios (train, val, test)")
        out = dict(zip(SPLIT_NAMES, map(float, splits), strict=True))
    if any(v < 0 for v in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be non-negative and sum to 1, got {out}")
    return out


def _make(task: tuple[int, int, int, tuple[tuple[str, float], ...], str]) -> dict[str, Any]:
    """One encoded sample; runs in the worker processes."""
    seed, index, size, splits, world = task
    scene = generate_scene(seed, index, size, world)
    key = sample_key(seed, index)
    meta = {
        **scene.captions,
        "source": SOURCE,
        "split": assign_split(key, dict(splits)),
        "classes": scene.classes,
        "background": scene.background,
        "objects": [o.to_json() for o in scene.objects],
    }
    files, full = encode_sample(key, scene.image, meta, mask=scene.label)
    counts = np.bincount(scene.label.ravel(), minlength=IGNORE_INDEX + 1)
    return {
        "key": key,
        "files": files,
        "meta": full,
        "pixels": {int(c): int(counts[c]) for c in np.flatnonzero(counts)},
        "instances": [o.class_name for o in scene.objects],
    }


def _results(tasks: list, workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        yield from map(_make, tasks)
        return
    # spawn, not fork: the parent may hold torch/OpenMP threads that fork would copy.
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(64, len(tasks) // (workers * 8)))
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_make, tasks, chunksize=chunk)


def write_synthetic_dataset(
    out: str | os.PathLike,
    num_images: int,
    image_size: int = 112,
    seed: int = 0,
    shard_size: int = 1000,
    splits: Sequence[float] | Mapping[str, float] = DEFAULT_SPLITS,
    workers: int = 1,
    progress: bool = True,
    world: str = DEFAULT_WORLD,
    name: str | None = None,
) -> Path:
    """Generates `num_images` scenes of `world` (worlds.WORLDS) into a dataset directory
    at `out` (path or file://).

    Everything is written to a hidden sibling directory, which replaces `out` only once
    complete (COMPLETE written last); a failed run leaves a previous dataset at `out`
    untouched. name: the dataset's name in its card (default: the folder's), which
    evaluation metrics carry (`eval/<task>/<name>-<split>/...`). Returns the dataset path.
    """
    check_image_size(image_size)
    if num_images < 1 or shard_size < 1 or workers < 1 or seed < 0:
        raise ValueError(
            "num_images, shard_size and workers must be positive and seed non-negative, got "
            f"num_images={num_images} shard_size={shard_size} workers={workers} seed={seed}"
        )
    ratios = _normalise_splits(splits)
    class_names = get_world(world).class_names
    path = local_path(out)
    complete = (path / COMPLETE_FILE).is_file()
    if path.exists() and not complete and (not path.is_dir() or any(path.iterdir())):
        raise DatasetError(f"{path}: exists and is not a dataset; refusing to replace it")
    tmp = temporary_sibling(path)
    writers: dict[str, ShardWriter] = {}
    try:
        card = CardBuilder(class_names, [s for s, r in ratios.items() if r > 0])
        rows = []
        items = tuple(ratios.items())
        tasks = [(seed, i, image_size, items, world) for i in range(num_images)]
        bar = tqdm(total=num_images, disable=not progress, unit="img", desc="synth")
        for r in _results(tasks, workers):
            meta = r["meta"]
            split = meta["split"]
            if split not in writers:
                writers[split] = ShardWriter(tmp / SHARDS_DIR, split, shard_size, MAX_SHARD_BYTES)
            shard = writers[split].write(r["key"], r["files"])
            rows.append({**meta, "shard": f"{SHARDS_DIR}/{shard}"})
            card.add(meta, r["pixels"], r["instances"])
            bar.update()
        bar.close()
        shards = {s: [f"{SHARDS_DIR}/{p.name}" for p in w.close()] for s, w in writers.items()}
        rows.sort(key=lambda row: row["split"])  # stable: index order within a split
        write_manifest(tmp / MANIFEST_FILE, rows)
        write_rejected(tmp / REJECTED_FILE, [])
        write_json(
            tmp / "dataset_card.json",
            {
                "name": name or path.name,
                "format_version": FORMAT_VERSION,
                "source": SOURCE,
                "generator": {
                    "name": GENERATOR,
                    "version": GENERATOR_VERSION,
                    "world": world,
                    "seed": seed,
                    "image_size": image_size,
                    "num_images": num_images,
                    "shard_size": shard_size,
                    "splits": ratios,
                },
                "label_map": {
                    "background": 0,
                    "ignore_index": IGNORE_INDEX,
                    "ignore": "small distractor marks (clutter) that are no class",
                },
                "manifest_columns": MANIFEST_SCHEMA.names,
                "shards": dict(sorted(shards.items())),
                **card.to_dict(),
            },
        )
        return commit_directory(tmp, path)
    except BaseException:
        for w in writers.values():
            w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
