"""Synthetic scene generation throughput, single process: 112 px vs 224 px (vs 448 px).

"scene" is `generate_scene` (image, label map, instance map, captions); "sample" adds
what the dataset writer does per image (PNG image + PNG mask + JSON, SHA-256, pHash).
Sizes run interleaved, so their ratio is meaningful on a noisy machine.

    .venv/bin/python bench/synth.py [--images 100] [--reps 5] [--sizes 112 224]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import interleaved_times, median, write_results
from tipsv2_core.data.shards import encode_sample
from tipsv2_core.data.synthetic import generate_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="images per timed call")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    args = parser.parse_args()
    counter = itertools.count()  # fresh scenes on every call

    def scenes(size: int):
        return lambda: [generate_scene(0, next(counter), size) for _ in range(args.images)]

    def samples(size: int):
        def run():
            for _ in range(args.images):
                s = generate_scene(0, next(counter), size)
                encode_sample(f"s0-{s.index:08d}", s.image, s.captions, mask=s.label)

        return run

    fns = {}
    for size in args.sizes:
        fns[f"scene@{size}"] = scenes(size)
        fns[f"sample@{size}"] = samples(size)
    times = interleaved_times(fns, args.reps)
    base = args.sizes[0]
    rows = []
    print(f"{'size':>6}{'scene img/s':>14}{'sample img/s':>14}{'scene cost vs ' + str(base):>20}")
    for size in args.sizes:
        t_scene, t_sample = median(times[f"scene@{size}"]), median(times[f"sample@{size}"])
        ratio = t_scene / median(times[f"scene@{base}"])
        rows.append(
            {
                "image_size": size,
                "scene_img_s": args.images / t_scene,
                "sample_img_s": args.images / t_sample,
                "scene_time_ratio_vs_smallest": ratio,
            }
        )
        print(
            f"{size:>6}{args.images / t_scene:>14.1f}{args.images / t_sample:>14.1f}{ratio:>19.2f}x"
        )
    path = write_results(
        "synth", rows, {"images_per_call": args.images, "reps": args.reps, "processes": 1}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
