"""Entry points: `pretrain` (TIPSv2 recipe) and `distill` (frozen teacher -> new student).

Keyword arguments pass through to `run_training` (hooks, device, stop_after).
"""

from __future__ import annotations

from pathlib import Path

from tipsv2_core.config import TrainConfig
from tipsv2_core.train.distill_arch import DistillMetaArch
from tipsv2_core.train.loop import TrainResult, run_training
from tipsv2_core.train.meta_arch import TIPSv2MetaArch


def pretrain(
    cfg: TrainConfig, out: str | Path, resume: bool = True, progress: bool = True, **kw
) -> TrainResult:
    """TIPSv2 pretraining: CLIP (two CLS, multi-granularity) + DINO + iBOT++, EMA heads."""
    return run_training(
        cfg,
        out,
        TIPSv2MetaArch,
        mask_ratio=cfg.data.mask_ratio,
        resume=resume,
        progress=progress,
        **kw,
    )


def distill(
    cfg: TrainConfig, out: str | Path, resume: bool = True, progress: bool = True, **kw
) -> TrainResult:
    """Distils `cfg.distill.teacher` into a randomly initialised `cfg.model.variant` student."""
    meta = {"teacher": str(cfg.distill.teacher)}
    return run_training(
        cfg,
        out,
        DistillMetaArch,
        mask_ratio=cfg.distill.mask_ratio,
        resume=resume,
        progress=progress,
        extra_meta=meta,
        **kw,
    )
