"""The demo's training step with each caption set's text pass cut to its longest caption
(`tipsv2_core.models.text.trim_padding`, as the trainer runs) against the same step with
every caption at `text_max_len` (the step before the change), side by side.

Captions are those of `tipsv2 data synth`'s default world (scenes drawn by the library,
tokenised with a tokenizer trained on them), sampled as the demo samples them: CLS1 the
alt-text, CLS2 the medium or the long caption. Images are random tensors: this times the
step, not data loading. Both arms start from the same weights and see the same batches;
their losses agree to float rounding (the trimmed columns are padding).

    .venv/bin/python bench/text_trim.py [--reps 7]
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
from bench.train_step import build, make_batch, matmul_rate, step_fn
from tipsv2_core.data.caption_sampling import sample_captions
from tipsv2_core.data.synthetic import generate_scene
from tipsv2_core.recipes import get_recipe
from tipsv2_core.text import Tokenizer, train_tokenizer
from tipsv2_core.train import meta_arch


def real_captions(cfg, batch: int, scenes: int = 400) -> dict[str, torch.Tensor]:
    """cls{1,2}_ids / _pad [batch, text_max_len] of real scenes' captions."""
    caps = [generate_scene(0, i, 112).captions for i in range(scenes)]
    corpus = [c[k] for c in caps for k in ("alt_text", "caption_medium", "caption_long")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.model"
        train_tokenizer(corpus, path, vocab_size=cfg.data.tokenizer_vocab)
        tok = Tokenizer(path, max_len=cfg.data.text_max_len)
    rng = np.random.default_rng(0)
    pairs = [sample_captions(caps[i], cfg.data.caption_strategy, rng) for i in range(batch)]
    out = {}
    for k, texts in (("cls1", [p[0] for p in pairs]), ("cls2", [p[1] for p in pairs])):
        ids, pad = tok(texts)
        out[f"{k}_ids"], out[f"{k}_pad"] = torch.as_tensor(ids), torch.as_tensor(pad)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; fp32 GEMM {matmul_rate() / 1e9:.0f} GFLOP/s")

    cfg = get_recipe("demo")
    batch = make_batch(cfg, cfg.stages[0].batch_size) | real_captions(cfg, cfg.stages[0].batch_size)
    lengths = {k: int((batch[f"{k}_pad"] == 0).sum(1).max()) for k in ("cls1", "cls2")}
    print(f"longest caption (tokens of {cfg.data.text_max_len}): {lengths}")

    trimmed, full = build(cfg), build(cfg)
    untouched = meta_arch.trim_padding

    def full_step() -> None:
        meta_arch.trim_padding = lambda ids, pad: (ids, pad)  # every caption at text_max_len
        try:
            step_fn(*full, batch)()
        finally:
            meta_arch.trim_padding = untouched

    times = interleaved_times({"trimmed": step_fn(*trimmed, batch), "full": full_step}, args.reps)
    t_trim, t_full = median(times["trimmed"]), median(times["full"])
    row = {
        "recipe": "demo",
        "longest_caption": lengths,
        "text_max_len": cfg.data.text_max_len,
        "step_s_trimmed": t_trim,
        "step_s_full_length": t_full,
        "speedup": t_full / t_trim,
        "load_average_end": os.getloadavg()[0],
    }
    print(
        f"demo step: {t_full:.3f} s at full length, {t_trim:.3f} s trimmed "
        f"-> {row['speedup']:.2f}x (medians of {args.reps}, interleaved)"
    )
    print(f"wrote {write_results('text_trim', [row])}")


if __name__ == "__main__":
    main()
