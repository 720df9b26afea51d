"""How far a run's self-distillation heads are from their uniform (constant) solution.

DINO and iBOT++ train the student's heads towards the teacher heads' centred, sharpened
distributions over K prototypes. If a head's output z points where the prototypes barely
differ, its logits cos(z, w_k) are nearly equal over k, the teacher's target is nearly
uniform (entropy ln K) and the loss gives the encoder no signal: the constant solution.

For each run directory (`tipsv2 train --out DIR`) this loads the last complete checkpoint,
runs the teacher's encoder (the student's own under head-only EMA, its EMA copy under
full EMA) and the *teacher* heads on one training batch of the run's own data, and
prints per head (CLS head on CLS1 tokens, patch head on patch tokens):

- the spread of the logits over the K prototypes (std over k, mean over samples);
- the entropy of the teacher's targets at τ_t (the run's final teacher temperature unless
  --teacher-temp says otherwise), with the run's centring and with the other one (EMA
  centre: softmax((logits − c) / τ_t); Sinkhorn-Knopp), against ln K.

    .venv/bin/python bench/ssl_heads.py RUN_DIR [RUN_DIR ...] [--teacher-temp T]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tipsv2_core.checkpoint import load_checkpoint
from tipsv2_core.config import from_dict
from tipsv2_core.train.checkpointing import arch_state_dict, latest_checkpoint
from tipsv2_core.train.loop import make_loader
from tipsv2_core.train.meta_arch import TIPSv2MetaArch


def entropy(p: torch.Tensor) -> float:
    """Mean entropy in nats of the rows of p [N, K]."""
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


@torch.no_grad()
def head_stats(run: Path, teacher_temp: float | None, max_patches: int = 2048) -> dict:
    """Per head ('cls', 'patch'): logit spread over k and target entropies (module doc)."""
    cfg = from_dict(json.loads((run / "config.json").read_text()))
    teacher_temp = cfg.loss.teacher_temp if teacher_temp is None else teacher_temp
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise SystemExit(f"{run}: no complete checkpoint under {run / 'checkpoints'}")
    model_state, _, state = load_checkpoint(ckpt, with_state=True)
    if state is None:  # the heads and loss centres live in the training state only
        raise SystemExit(f"{ckpt}: no state.safetensors, so no self-distillation heads to read")
    arch = TIPSv2MetaArch(cfg)  # the encoder, the heads and the loss centres, no optimiser
    arch.load_state_dict(arch_state_dict(model_state, state), strict=True)
    arch.eval()
    batch = next(make_loader(cfg, 0, 0, run / "tokenizer.model", mask_ratio=0.0))
    teacher = arch.teacher_vision if arch.teacher_vision is not None else arch.student.vision
    out = teacher(batch["global_crops"])
    tokens = {"cls": out.cls1, "patch": out.patch_tokens.flatten(0, 2)[:max_patches]}
    losses = {"cls": arch.dino_loss, "patch": arch.ibot_loss}
    stats = {"checkpoint": ckpt.name, "centering": cfg.loss.centering, "teacher_temp": teacher_temp}
    for name, x in tokens.items():
        logits = arch._head("dino" if name == "cls" else "ibot", teacher=True)(x)  # [N, K]
        stats[name] = {
            "logit_std_over_k": float(logits.std(dim=-1).mean()),
            "ln_k": math.log(logits.shape[-1]),
        } | {
            f"target_entropy_{c}": entropy(losses[name].teacher_probs(logits, teacher_temp, c))
            for c in ("center", "sinkhorn")
        }
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--teacher-temp", type=float, default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    for run in args.runs:
        s = head_stats(run, args.teacher_temp)
        print(f"{run} ({s['checkpoint']}, trained with {s['centering']} centring)")
        for name in ("cls", "patch"):
            h = s[name]
            print(
                f"  {name:5s} head: logit std over k {h['logit_std_over_k']:.3f}; target entropy "
                f"at τ_t={s['teacher_temp']:g}: centre {h['target_entropy_center']:.2f}, "
                f"Sinkhorn {h['target_entropy_sinkhorn']:.2f} nats (ln K = {h['ln_k']:.2f})"
            )


if __name__ == "__main__":
    main()
