"""Image-encoder inference: ONNX Runtime (fp32, fp16, int8) vs PyTorch eager, same weights.

Each variant is exported with `tipsv2_core.export.export_model` (parity-checked), then
PyTorch eager and the three ONNX Runtime sessions run the same batch, interleaved
(a, b, c, d, a, b, …), with the same number of intra-op threads. Prints latency per batch,
throughput and each runtime's speed-up over eager (>1 = faster than PyTorch), plus the
max |Δ| of each runtime's outputs (cls1, cls2, patch tokens) against PyTorch fp32.
Cases: ti14 (the small variant) at 224 px and S/14 (s14) at 448 px, batch 1 and 8.

    .venv/bin/python bench/inference.py [--reps 5] [--quick] [--threads N]

On a machine shared with other jobs, use `--threads 1`: with 2 threads on 2 busy cores
PyTorch's OpenMP workers wait on each other at every op (ti14 b1 measured at ~1.6 s
instead of ~45 ms while another benchmark ran), which measures the neighbour, not the
runtimes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import interleaved_times, median, write_results
from tests.conftest import randomize_
from tipsv2_core.export import export_model
from tipsv2_core.export.parity import max_abs_diff
from tipsv2_core.export.runtime import make_session
from tipsv2_core.models.tips import TIPSModel

CASES = [("ti14", 224, (1, 8)), ("s14", 448, (1, 8))]
QUICK = [("ti14", 224, (1, 8))]
RUNTIMES = ("torch", "ort_fp32", "ort_fp16", "ort_int8")
OUTPUTS = ["cls1", "cls2", "patch_tokens"]


def bench_variant(
    variant: str, size: int, batches: tuple[int, ...], reps: int, threads: int
) -> list[dict]:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    # pos_grid 32 for every variant, as bench/encoders.py: s14's own 16×16 table would make
    # 448 px (32×32 patches) resize it, 224 px not; the same table keeps cases comparable.
    model = randomize_(TIPSModel(variant, pos_grid=32), scale=0.02).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        result = export_model(
            model,
            Path(tmp) / "onnx",
            image_sizes=(size,),
            graphs=("image_encoder",),
            fp16=True,
            int8=True,
            batches=(1,),  # the export's own check; the benchmark batches are compared below
        )
        files = result.files
        sessions = {
            p: make_session(result.path / files[p]["image_encoder"], threads)
            for p in ("fp32", "fp16", "int8")
        }
        for batch in batches:
            images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
            feed = {"images": images.numpy()}

            def eager(images=images):
                with torch.inference_mode():
                    out = model.vision(images)
                return [out.cls1.numpy(), out.cls2.numpy(), out.patch_tokens.numpy()]

            fns = {"torch": eager}
            for p, sess in sessions.items():
                fns[f"ort_{p}"] = lambda sess=sess, feed=feed: sess.run(OUTPUTS, feed)
            ref = eager()
            diffs = {
                name: max(max_abs_diff(g, w) for g, w in zip(fn(), ref, strict=True))
                for name, fn in fns.items()
                if name != "torch"
            }
            times = interleaved_times(fns, reps)
            t = {name: median(ts) for name, ts in times.items()}
            rows.append(
                {
                    "variant": variant,
                    "image_size": size,
                    "batch": batch,
                    "threads": threads,
                    **{f"{n}_ms": 1e3 * t[n] for n in RUNTIMES},
                    **{f"{n}_img_s": batch / t[n] for n in RUNTIMES},
                    **{f"{n}_speedup": t["torch"] / t[n] for n in RUNTIMES[1:]},
                    **{f"{n}_max_abs_diff": diffs[n] for n in RUNTIMES[1:]},
                    "export_parity_max_abs_diff": {
                        "fp32": result.max_abs_diff,
                        **{p: r.max_abs_diff for p, r in result.precision_parity.items()},
                    },
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="ti14 at 224 only, 3 reps")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="intra-op threads of both runtimes (default: PyTorch's)",
    )
    args = parser.parse_args()
    reps = min(args.reps, 3) if args.quick else args.reps
    head = ("torch ms", "fp32 ms", "torch i/s", "fp32 i/s", "fp32 ×", "fp16 ×", "int8 ×")
    tail = ("|Δ| fp32", "|Δ| fp16", "|Δ| int8")
    print(f"{'case':<16}" + "".join(f"{c:>10}" for c in head + tail))
    rows = []
    for variant, size, batches in QUICK if args.quick else CASES:
        for r in bench_variant(variant, size, batches, reps, args.threads):
            rows.append(r)
            label = f"{variant}@{size} b{r['batch']}"
            print(
                f"{label:<16}"
                f"{r['torch_ms']:>10.1f}{r['ort_fp32_ms']:>10.1f}"
                f"{r['torch_img_s']:>10.2f}{r['ort_fp32_img_s']:>10.2f}"
                f"{r['ort_fp32_speedup']:>9.2f}x{r['ort_fp16_speedup']:>9.2f}x"
                f"{r['ort_int8_speedup']:>9.2f}x"
                f"{r['ort_fp32_max_abs_diff']:>10.1e}{r['ort_fp16_max_abs_diff']:>10.1e}"
                f"{r['ort_int8_max_abs_diff']:>10.1e}"
            )
    extra = {"reps": reps, "note": "speedup = PyTorch eager time / ONNX Runtime time"}
    path = write_results("inference_quick" if args.quick else "inference", rows, extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
