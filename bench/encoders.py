"""Image-encoder inference against the official TIPS PyTorch forward, same weights.

The baseline is tests/official_tips.py, a faithful re-implementation of the official
`pytorch/image_encoder.py` forward (eager attention with the full score matrix, its
LayerScale and norms, its position-table resize), run in fp32. Against it, interleaved in
one run with the same threads: our encoder in fp32 and in bf16 (`--precision bf16`), and
our ONNX export on ONNX Runtime in fp32 and int8. Prints images/s, each contender's
speed-up over the official fp32 forward, and max |Δ| of the L2-normalised CLS embeddings
(and of the raw patch tokens) against it. S/14 with the TIPSv2 32×32 position table.

    .venv/bin/python bench/encoders.py [--reps 5] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import interleaved_times, median, write_results
from tests.conftest import randomize_
from tests.official_tips import official_for
from tipsv2_core.export import export_model
from tipsv2_core.export.runtime import make_session
from tipsv2_core.inference import inference_precision
from tipsv2_core.models.tips import TIPSModel, l2_normalize

CASES = [("s14", 448, 1), ("s14", 448, 4), ("s14", 224, 1)]
QUICK = [("s14", 224, 1)]
CONTENDERS = ("ours_fp32", "ours_bf16", "ort_fp32", "ort_int8")


def _outputs(cls1, cls2, patches) -> dict[str, np.ndarray]:
    """Normalised CLS embeddings and raw patch tokens [B, N, D] as fp32 arrays."""
    t = [torch.as_tensor(x).float() for x in (cls1, cls2, patches)]
    return {
        "cls1": l2_normalize(t[0].reshape(t[0].shape[0], -1)).numpy(),
        "cls2": l2_normalize(t[1].reshape(t[1].shape[0], -1)).numpy(),
        "patches": t[2].reshape(t[2].shape[0], -1, t[2].shape[-1]).numpy(),
    }


def bench_variant(variant: str, cases: list[tuple[int, int]], reps: int, threads: int) -> list:
    torch.manual_seed(0)
    model = randomize_(TIPSModel(variant, pos_grid=32), scale=0.02).eval()
    vision, cfg = model.vision, model.vision.cfg
    official = official_for(
        cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_hidden, cfg.pos_grid, cfg.ffn
    ).eval()
    official.load_state_dict(vision.state_dict(), strict=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sizes = tuple(sorted({s for s, _ in cases}))
        result = export_model(
            model, Path(tmp) / "onnx", image_sizes=sizes, graphs=("image_encoder",), int8=True,
            batches=(1,),
        )  # fmt: skip
        sessions = {
            p: make_session(result.path / result.files[p]["image_encoder"], threads)
            for p in ("fp32", "int8")
        }
        for size, batch in cases:
            images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
            feed = {"images": images.numpy()}

            def run_official(images=images):
                with torch.inference_mode():
                    return _outputs(*official(images))

            def ours(p: str, images=images):
                with torch.inference_mode(), inference_precision(vision, p):
                    o = vision(images)
                return _outputs(o.cls1, o.cls2, o.patch_tokens)

            fns = {
                "official_fp32": run_official,
                "ours_fp32": lambda: ours("fp32"),
                "ours_bf16": lambda: ours("bf16"),
            }
            for p, sess in sessions.items():
                fns[f"ort_{p}"] = lambda sess=sess, feed=feed: _outputs(
                    *sess.run(["cls1", "cls2", "patch_tokens"], feed)
                )
            ref = run_official()
            diffs = {}
            for name in CONTENDERS:
                got = fns[name]()
                diffs[name] = {k: float(np.abs(got[k] - ref[k]).max()) for k in ref}
            times = interleaved_times(fns, reps)
            t = {k: median(v) for k, v in times.items()}
            rows.append(
                {
                    "variant": variant,
                    "image_size": size,
                    "batch": batch,
                    "threads": threads,
                    **{f"{k}_img_s": batch / t[k] for k in fns},
                    **{f"{k}_speedup": t["official_fp32"] / t[k] for k in CONTENDERS},
                    **{
                        f"{k}_max_abs_diff_cls": max(d["cls1"], d["cls2"]) for k, d in diffs.items()
                    },
                    **{f"{k}_max_abs_diff_patches": d["patches"] for k, d in diffs.items()},
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="S/14 at 224 px, batch 1 only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load}, {args.threads} threads")
    cases = QUICK if args.quick else CASES
    rows = []
    head = ("official i/s", *(f"{c} ×" for c in CONTENDERS), *(f"|Δ| {c}" for c in CONTENDERS))
    print(f"{'case':<16}" + "".join(f"{h:>14}" for h in head))
    for variant in dict.fromkeys(v for v, _, _ in cases):
        for r in bench_variant(variant, [(s, b) for v, s, b in cases if v == variant],
                               args.reps, args.threads):  # fmt: skip
            rows.append(r)
            label = f"{variant}@{r['image_size']} b{r['batch']}"
            print(
                f"{label:<16}"
                f"{r['official_fp32_img_s']:>14.2f}"
                + "".join(f"{r[f'{c}_speedup']:>13.2f}x" for c in CONTENDERS)
                + "".join(f"{r[f'{c}_max_abs_diff_cls']:>14.1e}" for c in CONTENDERS)
            )
    load_end = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load_end}")
    extra = {
        "baseline": "official TIPS forward re-implemented (tests/official_tips.py), fp32",
        "load_average": [load, load_end],
        "note": "speedup = official fp32 time / contender time; |Δ| of normalised CLS",
    }
    path = write_results("encoders_quick" if args.quick else "encoders", rows, extra)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
