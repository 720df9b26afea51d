"""The training data path in images/s per core, and how many cores feed one H100.

One item is what the trainer's DataLoader workers produce per image
(tipsv2_core/data/train_dataset.py): shard read (one seek + read per member), image
decode, 1 global and M local random-resized crops with flips (views.py), the patch mask
(masking.py), caption sampling and tokenisation, and the tensors. Two cases:

- `224/98`: the b14 recipe's low-res stage (global 224 px, 6 local crops of 98 px) on
  224 px images;
- `112/56`: the demo recipe (global 112 px, 4 locals of 56 px) on 112 px images;

each on a synthetic dataset in the default world (PNG members, as `tipsv2 data synth`
writes them) and on the same dataset re-encoded as JPEG quality 95 (as `tipsv2 data
curate` stores web images). One process, one torch thread = one core. A stage breakdown
times each part of an item separately with the same functions.

Cores per H100: the b14 recipe's FLOPs per image from the dry run (meta device, nothing
allocated), at 40 % MFU of the H100's dense bf16 peak (989 TFLOP/s), give the images/s
one GPU consumes; divided by the images/s of one core.

`--cores K` also runs K processes side by side (each one core, its own slice of the
items) and reports their summed rate (bench/gpu.sh runs it at 16 cores).

    .venv/bin/python bench/loader.py [--quick] [--items 300] [--cores K] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from bench._measure import write_results
from tipsv2_core.data.caption_sampling import sample_captions
from tipsv2_core.data.masking import make_mask
from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.data.train_dataset import TrainDataset, collate, manifest_rows
from tipsv2_core.data.views import ViewConfig, make_views
from tipsv2_core.text.tokenizer import Tokenizer, train_tokenizer

H100_BF16_DENSE = 989e12  # FLOP/s, the H100 SXM's dense bf16 peak
MFU = 0.40
CASES = {  # name: (image side, global, local, M, text_max_len)
    "224/98": (224, 224, 98, 6, 64),
    "112/56": (112, 112, 56, 4, 48),
}


def make_data(root: Path, side: int, n: int) -> dict[str, Path]:
    """{"png": dataset, "jpg": the same re-encoded as JPEG q95} (reused when present)."""
    png = root / f"png-{side}-{n}"
    if not (png / "COMPLETE").is_file():
        write_synthetic_dataset(png, n, side, seed=0, splits={"train": 1.0}, progress=False)
    jpg = root / f"jpg-{side}-{n}"
    if not (jpg / "COMPLETE").is_file():
        _reencode(png, jpg)
    return {"png": png, "jpg": jpg}


def _reencode(src: Path, dst: Path) -> None:
    """A copy of dataset `src` whose images are JPEG q95 (manifest and card unchanged)."""
    import shutil
    import tarfile

    from tipsv2_core.data.tarshards import ShardWriter

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.tar"))
    for shard in sorted((src / "shards").glob("*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                if ext == "png":
                    buf = io.BytesIO()
                    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", quality=95)
                    ext, data = "jpg", buf.getvalue()
                members.setdefault(key, {})[ext] = data
        prefix = shard.name.rsplit("-", 1)[0]
        with ShardWriter(tmp / "shards", prefix, max_samples_per_shard=10**9) as w:
            for key, files in members.items():
                w.write(key, files)
        written = tmp / "shards" / f"{prefix}-000000.tar"
        written.rename(tmp / "shards" / shard.name)
    tmp.rename(dst)


def dataset(data: Path, case: str, tokenizer: Path) -> TrainDataset:
    _, g, loc, m, text_len = CASES[case]
    views = ViewConfig(global_size=g, local_size=loc, num_local=m)
    return TrainDataset(data, "train", views, 0.75, "random", "two_cls_multi", tokenizer,
                        text_len, seed=0)  # fmt: skip


def rate(ds: TrainDataset, items: list[int]) -> float:
    """Images/s of `ds[...]` over `items` in this process (after one warm-up item)."""
    ds[(0, 0, items[0])]
    t0 = time.perf_counter()
    for i in items:
        ds[(0, 0, i)]
    return len(items) / (time.perf_counter() - t0)


def breakdown(ds: TrainDataset, items: list[int]) -> dict[str, float]:
    """Milliseconds per image for each part of an item (train_dataset.__getitem__)."""
    secs = dict.fromkeys(["read", "decode", "json", "crops", "mask", "tokenise"], 0.0)
    tok = Tokenizer(ds.tokenizer_path, max_len=ds.text_max_len)
    for i in items:
        rng = np.random.default_rng([ds.seed, 0, 0, i])
        ref = ds.samples[i]
        t0 = time.perf_counter()
        raw, raw_meta = ds._read(ref.image), ds._read(ref.meta)
        t1 = time.perf_counter()
        image = Image.open(io.BytesIO(raw)).convert("RGB")
        t2 = time.perf_counter()
        meta = json.loads(raw_meta)
        t3 = time.perf_counter()
        make_views(image, ds.views, rng)
        t4 = time.perf_counter()
        make_mask(ds.grid, ds.grid, ds.mask_ratio, ds.mask_mode, rng)
        t5 = time.perf_counter()
        a, b = sample_captions(meta, ds.caption_strategy, rng)
        tok([a, b] if b is not None else [a])
        t6 = time.perf_counter()
        for k, dt in zip(secs, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            secs[k] += dt
    return {k: 1000 * v / len(items) for k, v in secs.items()}


def _worker(args: tuple[str, str, str, list[int]]) -> tuple[int, float, float]:
    data, case, tokenizer, items = args
    torch.set_num_threads(1)
    ds = dataset(Path(data), case, Path(tokenizer))
    ds[(0, 0, items[0])]  # warm-up: file handles, tokenizer
    t0 = time.perf_counter()
    for i in items:
        ds[(0, 0, i)]
    return len(items), t0, time.perf_counter()


def parallel_rate(data: Path, case: str, tokenizer: Path, n: int, cores: int, items: int) -> float:
    """Summed images/s of `cores` one-thread processes, each on its own `items` items."""
    jobs = [(str(data), case, str(tokenizer), [(k * items + j) % n for j in range(items)])
            for k in range(cores)]  # fmt: skip
    with mp.get_context("spawn").Pool(cores) as pool:
        done = pool.map(_worker, jobs)
    start, end = min(d[1] for d in done), max(d[2] for d in done)
    return sum(d[0] for d in done) / (end - start)


def flops_per_image(recipe: str = "b14") -> dict[str, float]:
    """Training FLOPs per image of each stage of `recipe` (dry run, meta device)."""
    from tipsv2_core.config import apply_overrides
    from tipsv2_core.recipes import get_recipe
    from tipsv2_core.train.dry_run import dry_run

    cfg = get_recipe(recipe)
    # A small batch: per-image FLOPs are the same (the B x B contrastive logits are
    # < 0.1 % of them at 8192), and counting is quicker.
    cfg = apply_overrides(cfg, [f"stages.{i}.batch_size=64" for i in range(len(cfg.stages))])
    out = dry_run(cfg)
    return {f"{s['global_size']}/{s['local_size']}": s["flops_per_image"] for s in out["stages"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer items (a harness check)")
    ap.add_argument("--items", type=int, default=None, help="timed items per case (300)")
    ap.add_argument("--cores", type=int, default=0, help="also run K processes side by side")
    ap.add_argument("--data", default=None, help="folder for the generated datasets")
    ap.add_argument("--json", default=None, help="write the results here (else bench/results)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"of {list(CASES)}")
    ap.add_argument("--images", type=int, default=None, help="dataset size (default: items)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    items = args.items or (60 if args.quick else 300)
    n = args.images or max(items, 64)
    load0 = os.getloadavg()
    print(f"load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} on {os.cpu_count()} CPUs")
    root = Path(args.data or tempfile.gettempdir()) / "tipsv2-bench-loader"
    flops = flops_per_image("b14")
    gpu_rate = {k: MFU * H100_BF16_DENSE / f for k, f in flops.items()}
    rows = []
    for case in args.cases.split(","):
        side = CASES[case][0]
        sets = make_data(root, side, n)
        corpus = [r[f] for r in manifest_rows(sets["png"], "train")
                  for f in ("alt_text", "caption_medium", "caption_long")]  # fmt: skip
        tok = train_tokenizer(corpus, root / f"tok-{side}.model", vocab_size=1000)
        for fmt, data in sets.items():
            ds = dataset(data, case, tok)
            idx = [i % len(ds) for i in range(items)]
            r = rate(ds, idx)
            parts = breakdown(ds, idx[: max(20, items // 3)])
            items_ = [ds[(0, 0, i)] for i in idx[:32]]
            t0 = time.perf_counter()
            collate(items_)
            parts["collate"] = 1000 * (time.perf_counter() - t0) / len(items_)
            row = {"case": case, "format": fmt, "images_per_s_per_core": r, "ms_per_image": parts}
            if case in gpu_rate:
                row["h100_images_per_s_at_40pct_mfu"] = gpu_rate[case]
                row["cores_per_h100"] = gpu_rate[case] / r
            if args.cores:
                row[f"images_per_s_{args.cores}_cores"] = parallel_rate(
                    data, case, tok, len(ds), args.cores, items
                )
            rows.append(row)
            feed = f"  -> {row['cores_per_h100']:.0f} cores per H100" if case in gpu_rate else ""
            multi = (f"  {args.cores} cores: {row[f'images_per_s_{args.cores}_cores']:.0f} img/s"
                     if args.cores else "")  # fmt: skip
            print(f"{case} {fmt}: {r:6.1f} img/s per core{feed}{multi}")
            print("   ms/image: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    load1 = os.getloadavg()
    print("b14 FLOPs per image: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP" for k, v in flops.items())
          + f"; one H100 at {MFU:.0%} of {H100_BF16_DENSE / 1e12:.0f} TFLOP/s eats "
          + ", ".join(f"{k} {v:.0f} img/s" for k, v in gpu_rate.items()))  # fmt: skip
    print(
        f"load average {load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} CPUs"
        + (" (measured under contention)" if max(load0[0], load1[0]) > 2.5 else "")
    )
    extra = {
        "flops_per_image_b14": flops,
        "h100_bf16_dense_flops": H100_BF16_DENSE,
        "mfu": MFU,
        "items": items,
        "load_average_1m": {"before": load0[0], "after": load1[0]},
    }
    if args.json:
        from bench._measure import environment

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        doc = {"environment": environment(), "rows": rows, **extra}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    else:
        print(f"wrote {write_results('loader_quick' if args.quick else 'loader', rows, extra)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
