"""Curation throughput: Ray Data with 1 and 2 workers vs one plain in-process PIL loop.

N synthetic scenes (default 10000; `--quick`: 1000) are written once as an image folder:
448 px JPEGs (quality 90) with `.txt` alt-text and `.json` medium-caption sidecars, 1 % of
them re-encoded copies of others (near duplicates). Every contender runs the whole
`components.curate.curate` on that folder with the same rules (decode + verify, resize to
224 px, re-encode, captions, SHA-256 + pHash, dedup, shards, manifest, card); they differ
only in where the per-record work runs: `workers=0` is a plain loop in this process,
`workers=1|2` are Ray Data tasks. Ray starts once up front; its start-up is reported
apart, not counted in the rates. Runs are interleaved (a, b, c, a, b, c, …) after a small
warm-up of each, so machine noise hits all alike. Prints images/s, each contender's
speed-up over the plain loop and the scaling efficiency of 2 workers over 1, with the
machine's load average: where other jobs keep the cores busy, extra workers find no idle
core and the efficiency measures the neighbours, not Ray.

    .venv/bin/python bench/curate.py [--quick] [--images N] [--reps 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench._measure import median, write_results
from components.curate import curate
from components.curate.execute import ray_session
from tipsv2_core.data.synthetic import generate_scene

IMAGE_SIZE = 448  # the generator's largest; web images are larger still
RESIZE = 224  # stored side: the paper's low-res stage
CONTENDERS = {"plain loop": 0, "ray 1 worker": 1, "ray 2 workers": 2}


def make_folder(root: Path, n: int, size: int) -> Path:
    """The image folder of `n` scenes (reused when already complete)."""
    from PIL import Image

    done = root / "READY"
    if done.is_file() and done.read_text() == str(n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for i in range(n):
        if i % 100 == 99:  # a near duplicate: an earlier image at another quality
            data = (root / f"{i - 50:06d}.jpg").read_bytes()
            image = Image.open(io.BytesIO(data))
            captions = {"alt_text": f"copy of {i - 50}", "caption_medium": "a copy"}
        else:
            scene = generate_scene(1, i, size)
            image, captions = Image.fromarray(scene.image), scene.captions
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90 if i % 100 != 99 else 60)
        (root / f"{i:06d}.jpg").write_bytes(buf.getvalue())
        (root / f"{i:06d}.txt").write_text(captions["alt_text"] + "\n")
        (root / f"{i:06d}.json").write_text(
            json.dumps({"caption_medium": captions["caption_medium"]})
        )
    done.write_text(str(n))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000 images")
    parser.add_argument("--images", type=int, default=None, help="default 10000 (quick 1000)")
    parser.add_argument("--reps", type=int, default=1, help="timed runs per contender")
    parser.add_argument("--data", default=None, help="folder for the generated images")
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, help="source side, 112..448")
    parser.add_argument("--resize", type=int, default=RESIZE, help="stored longer side")
    args = parser.parse_args()
    n = args.images or (1000 if args.quick else 10000)
    base = Path(args.data or tempfile.gettempdir()) / "tipsv2-bench-curate"
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    src = make_folder(base / f"src-{n}-{args.size}", n, args.size)
    warm = make_folder(base / f"warm-100-{args.size}", 100, args.size)
    config = {"images": {"resize_max_side": args.resize}, "shard_max_samples": 1000}
    print(f"{n} images in {src} ({time.perf_counter() - t0:.0f} s to prepare)")

    out = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    counts: dict[str, int] = {}
    try:
        t0 = time.perf_counter()
        with ray_session(workers=2):
            ray_start = time.perf_counter() - t0
            for workers in CONTENDERS.values():  # warm-up: worker processes, imports
                curate([str(warm)], str(out / "warm"), config, workers=workers, progress=False)
            for _ in range(args.reps):
                for name, workers in CONTENDERS.items():
                    t0 = time.perf_counter()
                    result = curate(
                        [str(src)], str(out / "ds"), config, workers=workers, progress=False
                    )
                    times[name].append(time.perf_counter() - t0)
                    counts[name] = result.num_samples
                    print(
                        f"  {name:<14} {times[name][-1]:7.1f} s  {result.num_samples} kept, "
                        f"{result.num_rejected} rejected {result.rejects}"
                    )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert len(set(counts.values())) == 1, f"contenders disagree: {counts}"

    base_rate = n / median(times["plain loop"])
    rate1 = n / median(times["ray 1 worker"])
    rows = []
    print(f"\n{'contender':<15}{'workers':>8}{'s':>9}{'img/s':>9}{'vs loop':>9}")
    for name, workers in CONTENDERS.items():
        rate = n / median(times[name])
        rows.append(
            {
                "contender": name,
                "workers": workers,
                "seconds": median(times[name]),
                "images_per_s": rate,
                "speedup_vs_loop": rate / base_rate,
            }
        )
        seconds = median(times[name])
        print(f"{name:<15}{workers:>8}{seconds:>9.1f}{rate:>9.1f}{rate / base_rate:>8.2f}x")
    efficiency = n / median(times["ray 2 workers"]) / rate1 / 2
    load = (load_before, os.getloadavg()[0])
    print(
        f"scaling efficiency, 2 workers over 1: {efficiency:.0%}  (ray start-up {ray_start:.1f} s, "
        f"not counted; {os.cpu_count()} CPUs, load average {load[0]:.1f} -> {load[1]:.1f})"
    )
    path = write_results(
        "curate_quick" if args.quick else "curate",
        rows,
        {
            "images": n,
            "reps": args.reps,
            "image_size": args.size,
            "config": config,
            "ray_startup_s": ray_start,
            "scaling_efficiency_2_over_1": efficiency,
            "kept": counts["plain loop"],
            # Other jobs' load: above the CPU count, the workers share cores with them.
            "load_average_1m": {"before": load[0], "after": load[1]},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
