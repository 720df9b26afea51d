"""Curation throughput: Ray Data with 1 and 2 workers vs one plain in-process loop, and
what one record costs, stage by stage.

N synthetic scenes (default 3000; `--quick`: 600) are written once as an image folder:
448 px JPEGs (quality 90; drawn at 224 px and enlarged, 4x quicker to make) with `.txt`
alt-text and `.json` medium-caption sidecars, 1 % of them re-encoded copies of others
(near duplicates). Every contender runs the whole
`components.curate.curate` on that folder with the same rules (decode + verify, resize to
224 px, re-encode, captions, SHA-256 + pHash, dedup, shards, manifest, card); they differ
only in where the per-record work runs: `workers=0` is a plain loop in this process,
`workers=1|2` are Ray Data tasks; "ray 2, budgets" is 2 workers with Ray Data's default
per-operator budgets, which the curation step turns off (on a local Ray they held the two
workers to taking turns; components/curate/execute.py). One Ray runtime starts up front
and serves every run; its start-up is reported apart, not counted in the rates. Runs are
interleaved (a, b, c, a, b, c, …) after a small warm-up of each, so machine noise hits
all alike.

Per contender it also counts CPU seconds: this process and every process below it (Ray's
raylet, GCS and worker processes), before and after the run. Ray's cost per record is
the CPU per record of a Ray run minus that of the plain loop, which holds under load too
(wall-clock ratios do not: extra workers find no idle core while other jobs run).

The breakdown times each stage of the per-record work on the first 300 records with the
pipeline's own functions, one after another in this process: read (the image and its
sidecars), decode (header checks + full decode, at reduced size where the JPEG allows),
checks (size rules, orientation, RGB conversion, resize), captions, hashing (content
hash, SHA-256, pHash), re-encode, the sample's json, and on the driver: dedup, the shard
write and the Arrow round trip a Ray block makes.

    .venv/bin/python bench/curate.py [--quick] [--images N] [--reps 2]

Self-contained (it makes its own data and starts its own Ray); about 2.5 minutes on 2
quiet cores, the first run adding ~1 minute to draw the images.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A loaded machine can take longer than the default 10 s for the raylet to register.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")

import psutil

from bench._measure import median, write_results
from components.curate import curate, execute
from components.curate.execute import _ResultColumns, from_table, ray_session, read_bytes
from components.curate.plan import plan_sources
from components.storage import default_storage
from tipsv2_core.data.curation import images as im
from tipsv2_core.data.curation import process as pr
from tipsv2_core.data.curation.captioners import load_captioner
from tipsv2_core.data.curation.config import CurateConfig
from tipsv2_core.data.curation.dedup import Deduplicator
from tipsv2_core.data.curation.records import Accepted, Reject
from tipsv2_core.data.curation.tasks import read_task
from tipsv2_core.data.hashing import phash, sha256_hex
from tipsv2_core.data.shards import ShardWriter
from tipsv2_core.data.synth_dataset import assign_split
from tipsv2_core.data.synthetic import generate_scene

IMAGE_SIZE = 448  # the generator's largest; web images are larger still
RESIZE = 224  # stored side: the paper's low-res stage
DRAW_SIZE = 224  # scenes are drawn at this side, then enlarged to IMAGE_SIZE
# name: (workers, Ray Data's per-operator budgets on). The last row is Ray Data's default,
# which the curation step turns off (components/curate/execute.py, OPERATOR_BUDGETS).
CONTENDERS = {
    "plain loop": (0, False),
    "ray 1 worker": (1, False),
    "ray 2 workers": (2, False),
    "ray 2, budgets": (2, True),
}
BREAKDOWN_RECORDS = 300


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
        else:  # drawn at 224 px and enlarged: 4x cheaper to make than drawing at 448
            scene = generate_scene(1, i, min(size, DRAW_SIZE))
            image, captions = Image.fromarray(scene.image), scene.captions
            if size != image.width:
                image = image.resize((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90 if i % 100 != 99 else 60)
        (root / f"{i:06d}.jpg").write_bytes(buf.getvalue())
        (root / f"{i:06d}.txt").write_text(captions["alt_text"] + "\n")
        (root / f"{i:06d}.json").write_text(
            json.dumps({"caption_medium": captions["caption_medium"]})
        )
    done.write_text(str(n))
    return root


def tree_cpu_seconds() -> float:
    """User + system CPU of this process and every living process below it (Ray's)."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # exited meanwhile
            pass
    return total


# ------------------------------------------------------------------------- the breakdown


class Clock:
    """Accumulates seconds per stage: `clock("decode", fn, *args)` runs and times fn."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def __call__(self, stage: str, fn: Callable, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.add(stage, time.perf_counter() - t0)
        return out


def _clean(clock: Clock, data: bytes, rules) -> tuple:
    """images.clean_image, stage by stage (same calls, same order)."""
    opened = clock("decode", im._open, data, rules)
    source_size, source_mode = opened.size, opened.mode
    clock("checks", im._check_size, *source_size, rules)
    steps: list[str] = []
    image = clock("decode", im._decode, opened, rules.resize_max_side)
    if image.size != source_size:
        steps.append("draft_decode")

    def convert(image):
        image = im._orient(image, steps)
        image = im._to_rgb(image, rules.background, steps)
        return im._resize(image, rules.resize_max_side, steps)

    image = clock("checks", convert, image)
    unchanged = not steps and source_mode == "RGB"
    if rules.keep_source_bytes and unchanged and opened.format == "JPEG":
        stored = data
    else:
        stored = clock("re-encode", im.encode, image, rules)
    return image, stored, steps


@contextlib.contextmanager
def operator_budgets(on: bool) -> Iterator[None]:
    """Ray Data's per-operator budgets on or off for the runs inside (read by the driver,
    where Ray Data's executor runs)."""
    before, execute.OPERATOR_BUDGETS = execute.OPERATOR_BUDGETS, on
    try:
        yield
    finally:
        execute.OPERATOR_BUDGETS = before


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def breakdown(src: Path, cfg: CurateConfig, n: int, scratch: Path) -> dict[str, float]:
    """Milliseconds per record for each stage, over the first `n` records of `src`."""
    tasks = plan_sources([str(src)], cfg, default_storage())[0].tasks[:n]
    captioner = load_captioner(cfg.captioner.name, cfg.captioner.options)
    dedup = Deduplicator(cfg.dedup.exact, cfg.dedup.near, cfg.dedup.max_hamming)
    clock = Clock()
    results = []
    with ShardWriter(scratch, "train", cfg.shard_max_samples, cfg.shard_max_bytes) as writer:
        for task in tasks:
            rec = clock("read", lambda t: next(read_task(t, read_bytes, 1 << 26)), task)
            try:
                captions, classes, extra = clock("captions", pr._gather, rec, cfg)
                image, stored, steps = _clean(clock, rec.files[rec.image_ext], cfg.images)
                captions, sources = clock("captions", pr._fill, image, captions, cfg, captioner)
            except Reject:
                continue
            chash = clock("hashing", im.content_hash, image)
            sha = clock("hashing", sha256_hex, stored)
            ph = clock("hashing", phash, image)

            t0 = time.perf_counter()
            meta = {**extra, **captions, "caption_sources": sources, "key": rec.key,
                    "source": rec.source, "record": rec.record,
                    "split": assign_split(rec.key, dict(cfg.splits)),
                    "classes": list(classes or []), "width": image.width,
                    "height": image.height, "sha256": sha, "phash": ph,
                    "cleaning": steps, "source_format": "JPEG"}  # fmt: skip
            doc = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
            clock.add("sample json", time.perf_counter() - t0)
            files = {cfg.images.store_format: stored, "json": doc}
            result = Accepted(rec.key, rec.source, rec.record, files, meta, chash, ph)
            results.append(result)
            clock("dedup (driver)", dedup.check, rec.key, chash, ph)
            clock("shard write (driver)", writer.write, rec.key, files)

    def round_trip():
        cols = _ResultColumns()
        for r in results:
            cols.append(r)
        return list(from_table(cols.table()))

    # Arrow's first table in a process costs ~0.2 s of one-time set-up, more than 300
    # round trips: warm up, then take the best of 5 (a worker pays the set-up once).
    round_trip()
    best = min(_timed(round_trip) for _ in range(5))
    clock.add("Arrow round trip", best)
    return {k: 1000 * v / len(tasks) for k, v in clock.seconds.items()}


# ------------------------------------------------------------------------------ the race


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 images, 1 rep")
    parser.add_argument("--images", type=int, default=None, help="default 3000 (quick 600)")
    parser.add_argument("--reps", type=int, default=None, help="timed runs each (default 2)")
    parser.add_argument("--data", default=None, help="folder for the generated images")
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, help="source side, 112..448")
    parser.add_argument("--resize", type=int, default=RESIZE, help="stored longer side")
    args = parser.parse_args()
    n = args.images or (600 if args.quick else 3000)
    reps = args.reps or (1 if args.quick else 2)
    base = Path(args.data or tempfile.gettempdir()) / "tipsv2-bench-curate"
    load_before = os.getloadavg()
    print(f"load average {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    t0 = time.perf_counter()
    src = make_folder(base / f"src-{n}-{args.size}-v2", n, args.size)
    warm = make_folder(base / f"warm-100-{args.size}-v2", 100, args.size)
    config = {"images": {"resize_max_side": args.resize}, "shard_max_samples": 1000}
    cfg = CurateConfig.from_dict(config)
    print(f"{n} images in {src} ({time.perf_counter() - t0:.0f} s to prepare)")

    out = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    cpu: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    counts: dict[str, int] = {}
    try:
        stages = breakdown(src, cfg, min(n, BREAKDOWN_RECORDS), out / "breakdown")
        print("per record, ms, stage by stage on one core in this process:")
        for stage, ms in stages.items():
            print(f"  {stage:<32}{ms:7.3f}")
        t0 = time.perf_counter()
        with ray_session(workers=2):
            ray_start = time.perf_counter() - t0
            for workers, budgets in CONTENDERS.values():  # warm-up: worker processes, imports
                with operator_budgets(budgets):
                    curate([str(warm)], str(out / "warm"), config, workers=workers, progress=False)
            for _ in range(reps):
                for name, (workers, budgets) in CONTENDERS.items():
                    c0, t0 = tree_cpu_seconds(), time.perf_counter()
                    with operator_budgets(budgets):
                        result = curate(
                            [str(src)], str(out / "ds"), config, workers=workers, progress=False
                        )
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(tree_cpu_seconds() - c0)
                    counts[name] = result.num_samples
                    print(
                        f"  {name:<14} {times[name][-1]:7.1f} s  {cpu[name][-1]:6.1f} CPU s  "
                        f"{result.num_samples} kept, {result.num_rejected} rejected"
                    )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert len(set(counts.values())) == 1, f"contenders disagree: {counts}"

    rate = {name: n / median(ts) for name, ts in times.items()}
    cpu_ms = {name: 1000 * median(cs) / n for name, cs in cpu.items()}
    rows = []
    print(f"\n{'contender':<15}{'workers':>8}{'s':>8}{'img/s':>8}{'vs loop':>9}{'CPU ms/rec':>12}")
    for name, (workers, budgets) in CONTENDERS.items():
        row = {
            "contender": name,
            "workers": workers,
            "ray_data_operator_budgets": budgets,
            "seconds": median(times[name]),
            "images_per_s": rate[name],
            "speedup_vs_loop": rate[name] / rate["plain loop"],
            "cpu_ms_per_record": cpu_ms[name],
        }
        rows.append(row)
        print(f"{name:<15}{workers:>8}{row['seconds']:>8.1f}{row['images_per_s']:>8.0f}"
              f"{row['speedup_vs_loop']:>8.2f}x{row['cpu_ms_per_record']:>12.2f}")  # fmt: skip
    two_over_one = rate["ray 2 workers"] / rate["ray 1 worker"]
    budgets_off = rate["ray 2 workers"] / rate["ray 2, budgets"]
    ray_ms = {w: cpu_ms[f"ray {w}"] - cpu_ms["plain loop"] for w in ("1 worker", "2 workers")}
    stages["Ray overhead, 1 worker (CPU)"] = ray_ms["1 worker"]
    stages["Ray overhead, 2 workers (CPU)"] = ray_ms["2 workers"]
    print(
        f"\nRay's overhead per record (CPU of a Ray run beyond the plain loop's): "
        f"{ray_ms['1 worker']:.3f} ms with 1 worker, {ray_ms['2 workers']:.3f} ms with 2"
    )
    load = os.getloadavg()
    print(
        f"\nray 2 workers / ray 1 worker: {two_over_one:.2f}x; ray 1 worker / plain loop: "
        f"{rate['ray 1 worker'] / rate['plain loop']:.2f}x  (ray start-up {ray_start:.1f} s, not "
        f"counted; {os.cpu_count()} CPUs, load average {load_before[0]:.1f} -> {load[0]:.1f})"
    )
    print(f"ray 2 workers without / with Ray Data's operator budgets: {budgets_off:.2f}x")
    if max(load_before[0], load[0]) > (os.cpu_count() or 1) + 0.5:
        print("note: the load average exceeds the CPU count: other jobs shared the cores, so "
              "the wall-clock ratios are measured under contention")  # fmt: skip
    path = write_results(
        "curate_quick" if args.quick else "curate",
        rows,
        {
            "images": n,
            "reps": reps,
            "image_size": args.size,
            "config": config,
            "ray_startup_s": ray_start,
            "ray2_over_ray1": two_over_one,
            "ray2_budgets_off_over_on": budgets_off,
            "breakdown_ms_per_record": stages,
            "breakdown_records": min(n, BREAKDOWN_RECORDS),
            "kept": counts["plain loop"],
            # Other jobs' load: above the CPU count, the workers share cores with them.
            "load_average_1m": {"before": load_before[0], "after": load[0]},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
