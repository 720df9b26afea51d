"""Image-encoder inference: our encoder vs the plainly written reference, same weights.

Prints throughput (images/s), peak memory above baseline and the max output difference
for S/14 at 448 px and ti14 at 224 px, batch 1 and 8, as ratios from one interleaved run.

    .venv/bin/python bench/encoders.py [--reps 5] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import PeakRSS, interleaved_times, median, write_results
from tests.conftest import randomize_
from tests.reference_tips import vision_forward
from tipsv2_core.models.tips import TIPSModel

CASES = [("s14", 448, 1), ("s14", 448, 8), ("ti14", 224, 1), ("ti14", 224, 8)]
QUICK = [("ti14", 224, 1), ("ti14", 224, 8)]


def bench_case(variant: str, size: int, batch: int, reps: int) -> dict:
    torch.manual_seed(0)
    model = randomize_(TIPSModel(variant, pos_grid=32), scale=0.02).vision.eval()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    heads = model.cfg.num_heads
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))

    def ours():
        with torch.inference_mode():
            return model(images)

    def reference():
        with torch.inference_mode():
            return vision_forward(
                sd, images, heads, input_mean=model.cfg.input_mean, input_std=model.cfg.input_std
            )

    out, ref = ours(), reference()
    diff = max(
        (out.cls1 - ref[0]).abs().max().item(),
        (out.cls2 - ref[1]).abs().max().item(),
        (out.patch_tokens - ref[2]).abs().max().item(),
    )
    with PeakRSS() as mem_ours:
        ours()
    with PeakRSS() as mem_ref:
        reference()
    times = interleaved_times({"ours": ours, "reference": reference}, reps)
    t_ours, t_ref = median(times["ours"]), median(times["reference"])
    return {
        "variant": variant,
        "image_size": size,
        "batch": batch,
        "ours_img_s": batch / t_ours,
        "reference_img_s": batch / t_ref,
        "speedup": t_ref / t_ours,
        "ours_peak_mib": mem_ours.mib,
        "reference_peak_mib": mem_ref.mib,
        "max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small variant only")
    args = parser.parse_args()
    rows = []
    cols = ("ours img/s", "ref img/s", "speedup", "ours MiB", "ref MiB", "max|Δ|")
    print(f"{'case':<18}" + "".join(f"{c:>11}" for c in cols))
    for variant, size, batch in QUICK if args.quick else CASES:
        r = bench_case(variant, size, batch, args.reps)
        rows.append(r)
        print(
            f"{f'{variant}@{size} b{batch}':<18}{r['ours_img_s']:>11.2f}"
            f"{r['reference_img_s']:>11.2f}{r['speedup']:>10.2f}x{r['ours_peak_mib']:>11.0f}"
            f"{r['reference_peak_mib']:>11.0f}{r['max_abs_diff']:>11.1e}"
        )
    path = write_results("encoders", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
