"""Typed training configuration: nested dataclasses, dotted overrides, validation.

A run is described by one `TrainConfig` tree. Recipes (tipsv2_core/recipes.py) are
functions that return one; the CLI applies `--set key=value` overrides on top, each
checked against the field's type (tipsv2_core/schema.py, as every config of the project),
and the resolved tree is written next to every checkpoint. Values not reported by the
paper are marked [INF] (our choice).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tipsv2_core.schema import ConfigError, build, set_path

__all__ = [
    "ConfigError",
    "DataCfg",
    "DistillCfg",
    "EMACfg",
    "HeadCfg",
    "LossCfg",
    "ModelCfg",
    "OptimCfg",
    "RunCfg",
    "StageCfg",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "set_value",
    "to_dict",
    "validate",
]


@dataclass
class ModelCfg:
    variant: str = "nano14"
    pos_grid: int | None = None  # None: the variant's (32 for TIPSv2 sizes)
    init_temperature: float = 0.07  # [INF] CLIP's start; released TIPSv2 ends near 0.005


@dataclass
class HeadCfg:
    out_dim: int = 32768  # K prototypes; TIPS v1 reportedly used 32k
    hidden_dim: int = 2048  # [INF] DINOv2 defaults
    bottleneck_dim: int = 256
    nlayers: int = 3
    shared: bool = False  # one head for the CLS and the patch loss


@dataclass
class StageCfg:
    """One resolution stage (paper: 224/98 px low-res, then 448/140 px high-res)."""

    name: str = "low_res"
    steps: int = 100
    batch_size: int = 32
    global_size: int = 224
    local_size: int = 98


@dataclass
class DataCfg:
    path: str = ""  # dataset directory (shards + manifest.parquet), or a file:// URI
    split: str = "train"
    num_local: int = 6
    global_scale: tuple[float, float] = (0.32, 1.0)  # [INF] crop scales are not reported
    local_scale: tuple[float, float] = (0.05, 0.32)
    flip_p: float = 0.5
    mask_ratio: float = 0.75
    mask_mode: str = "random"  # "random" | "block"
    caption_strategy: str = "two_cls_multi"  # see tipsv2_core/data/caption_sampling.py
    text_max_len: int = 64
    tokenizer: str = ""  # SentencePiece model; empty: train one on the dataset's captions
    tokenizer_vocab: int = 4000  # size of a tokenizer trained by the run
    workers: int = 2  # DataLoader worker processes


@dataclass
class LossCfg:
    clip_weight: float = 1.0
    dino_weight: float = 1.0  # α
    ibot_weight: float = 2.0  # β
    # Not in the paper (0 keeps its loss): weight of an extra L_CLIP between the mean of
    # the output patch tokens and CLS1's captions. It is the one term whose gradient
    # reaches every patch's own residual stream with the text (README, "Learning dense
    # alignment", item 10); the paper relies on scale for that.
    pooled_clip_weight: float = 0.0
    ibot_mode: str = "ibot++"  # "ibot++" (TIPSv2) | "ibot" (masked patches only)
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_frac: float = 0.3  # fraction of all steps
    centering: str = "center"  # "center" (EMA centre) | "sinkhorn"
    center_momentum: float = 0.9
    clip_view: str = "unmasked"  # [INF] which global view feeds L_CLIP: "unmasked" | "masked"
    # [INF] Ramp α and β from 0 over this fraction of the steps. With the head-only teacher
    # the encoder can fall into the constant solution of the self-distillation losses
    # before L_CLIP has made its features diverse; a short ramp avoids that on small runs.
    ssl_warmup_frac: float = 0.0


@dataclass
class EMACfg:
    mode: str = "head_only"  # "head_only" (TIPSv2) | "full" (TIPS)
    momentum_start: float = 0.994  # [INF] cosine schedule towards momentum_end
    momentum_end: float = 1.0


@dataclass
class OptimCfg:
    name: str = "adamw"  # "adamw" | "adafactor"
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_frac: float = 0.1
    # The last decay_frac of all steps decay the rate to min_lr (half-cosine); before
    # them, after the warm-up, it stays at lr. 1.0: the decay starts after the warm-up.
    decay_frac: float = 1.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.999
    clip_grad: float = 3.0  # 0 disables
    accum_steps: int = 1
    # AdamW through torch's fused kernel (CPU and CUDA; the demo's bf16 step 1.08× faster
    # on CPU, bench/optimizer.py). False: torch's per-tensor loop, the same update up to
    # rounding, as runs made before this option used.
    fused: bool = True


@dataclass
class RunCfg:
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA) | "fp32" | "bf16"
    data_version: str = ""  # recorded in checkpoints (DVC revision when run by the pipeline)
    # Learning curves (tipsv2_core/train/probe.py): zero-shot mIoU and retrieval R@1 on
    # the first probe_images samples of probe_split, every probe_every steps (0: off).
    probe_every: int = 0
    probe_images: int = 100
    probe_split: str = "val"


@dataclass
class DistillCfg:
    teacher: str = ""  # native checkpoint directory or official npz pair prefix
    teacher_variant: str | None = None
    patch_weight: float = 1.0
    cls_weight: float = 1.0
    clip_weight: float = 1.0
    mask_ratio: float = 0.0  # the student's view; the teacher always sees it unmasked
    init_text_from_teacher: bool = False
    # Start the student's vision encoder from the teacher's weights (same variant only).
    # The paper's Tab. 2 row 7: this keeps the student in the teacher's basin, so it
    # inherits the teacher's weak dense features; the default is a random init.
    init_student_from_teacher: bool = False


@dataclass
class TrainConfig:
    recipe: str = "custom"
    model: ModelCfg = field(default_factory=ModelCfg)
    heads: HeadCfg = field(default_factory=HeadCfg)
    data: DataCfg = field(default_factory=DataCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    ema: EMACfg = field(default_factory=EMACfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    run: RunCfg = field(default_factory=RunCfg)
    stages: list[StageCfg] = field(default_factory=lambda: [StageCfg()])
    distill: DistillCfg = field(default_factory=DistillCfg)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, StageCfg]:
        """(index, stage) that step number `step` (0-based) belongs to."""
        end = 0
        for i, s in enumerate(self.stages):
            end += s.steps
            if step < end:
                return i, s
        return len(self.stages) - 1, self.stages[-1]


def to_dict(cfg: Any) -> Any:
    """The config as plain JSON-ready data (what `from_dict` reads back)."""
    return dataclasses.asdict(cfg)


def set_value(cfg: TrainConfig, dotted: str, raw: Any) -> None:
    """Sets `a.b.c` (list items by index: `stages.0.steps`) after checking name and type."""
    set_path(cfg, dotted, raw)


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Applies `key=value` strings in order; returns the same (mutated) config."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
    return cfg


def from_dict(doc: Mapping[str, Any]) -> TrainConfig:
    """Rebuilds a config written by `to_dict` (e.g. from a checkpoint's meta.json)."""
    return build(TrainConfig, doc)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: TrainConfig, patch_size: int = 14) -> TrainConfig:
    """Checks cross-field rules; every message names the offending key."""
    from tipsv2_core.models.variants import get_variant

    get_variant(cfg.model.variant)
    _check(len(cfg.stages) > 0, "stages: at least one stage is needed")
    for i, s in enumerate(cfg.stages):
        _check(s.steps > 0, f"stages.{i}.steps must be positive, got {s.steps}")
        _check(s.batch_size > 0, f"stages.{i}.batch_size must be positive")
        for name in ("global_size", "local_size"):
            v = getattr(s, name)
            _check(
                v > 0 and v % patch_size == 0,
                f"stages.{i}.{name}={v} must be a multiple of {patch_size}",
            )
    d, lo, em, op = cfg.data, cfg.loss, cfg.ema, cfg.optim
    _check(0.0 <= d.mask_ratio < 1.0, f"data.mask_ratio={d.mask_ratio} must be in [0, 1)")
    _check(
        d.mask_mode in ("random", "block"), f"data.mask_mode={d.mask_mode!r}: 'random' or 'block'"
    )
    _check(d.num_local >= 0, "data.num_local must be >= 0")
    _check(d.workers >= 0, "data.workers must be >= 0")
    _check(
        lo.ibot_mode in ("ibot", "ibot++"), f"loss.ibot_mode={lo.ibot_mode!r}: 'ibot' or 'ibot++'"
    )
    _check(lo.centering in ("center", "sinkhorn"), f"loss.centering={lo.centering!r}")
    _check(lo.clip_view in ("unmasked", "masked"), f"loss.clip_view={lo.clip_view!r}")
    _check(0.0 <= lo.ssl_warmup_frac <= 1.0, "loss.ssl_warmup_frac must be in [0, 1]")
    _check(em.mode in ("head_only", "full"), f"ema.mode={em.mode!r}: 'head_only' or 'full'")
    _check(
        0.0 <= em.momentum_start <= em.momentum_end <= 1.0,
        "ema.momentum_start <= ema.momentum_end <= 1",
    )
    _check(op.name in ("adamw", "adafactor"), f"optim.name={op.name!r}: 'adamw' or 'adafactor'")
    _check(op.lr > 0 and op.min_lr >= 0, "optim.lr must be > 0 and optim.min_lr >= 0")
    _check(op.accum_steps >= 1, "optim.accum_steps must be >= 1")
    _check(cfg.run.precision in ("auto", "fp32", "bf16"), f"run.precision={cfg.run.precision!r}")
    _check(cfg.run.probe_every >= 0, f"run.probe_every={cfg.run.probe_every} must be >= 0")
    _check(cfg.run.probe_images >= 1, f"run.probe_images={cfg.run.probe_images} must be >= 1")
    _check(0.0 <= cfg.distill.mask_ratio < 1.0, "distill.mask_ratio must be in [0, 1)")
    _check_ranges(cfg)
    from tipsv2_core.data.caption_sampling import STRATEGIES

    _check(
        d.caption_strategy in STRATEGIES,
        f"data.caption_strategy={d.caption_strategy!r}: one of {list(STRATEGIES)}",
    )
    return cfg


# Sizes and periods used as divisors, shapes or counts: zero would fail deep inside.
_AT_LEAST_ONE = (
    "heads.out_dim",
    "heads.hidden_dim",
    "heads.bottleneck_dim",
    "heads.nlayers",
    "data.text_max_len",
    "data.tokenizer_vocab",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.log_every",
)
_POSITIVE = (
    "model.init_temperature",
    "loss.student_temp",
    "loss.teacher_temp",
    "loss.warmup_teacher_temp",
)
_FRACTION = (
    "data.flip_p",
    "optim.warmup_frac",
    "optim.decay_frac",
    "loss.teacher_temp_warmup_frac",
    "loss.center_momentum",
)
_NON_NEGATIVE = (
    "loss.clip_weight",
    "loss.dino_weight",
    "loss.ibot_weight",
    "loss.pooled_clip_weight",
    "optim.weight_decay",
    "optim.weight_decay_end",
    "optim.clip_grad",
    "distill.patch_weight",
    "distill.cls_weight",
    "distill.clip_weight",
)


def _get(cfg: TrainConfig, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _check_ranges(cfg: TrainConfig) -> None:
    """Range rules of single fields: each message names the key and the value."""
    for key in _AT_LEAST_ONE:
        v = _get(cfg, key)
        _check(v >= 1, f"{key}={v} must be >= 1")
    for key in _POSITIVE:
        v = _get(cfg, key)
        _check(v > 0, f"{key}={v} must be > 0")
    for key in _FRACTION:
        v = _get(cfg, key)
        _check(0.0 <= v <= 1.0, f"{key}={v} must be in [0, 1]")
    for key in _NON_NEGATIVE:
        v = _get(cfg, key)
        _check(v >= 0, f"{key}={v} must be >= 0")
    for key in ("data.global_scale", "data.local_scale"):
        lo, hi = _get(cfg, key)
        _check(0.0 < lo <= hi <= 1.0, f"{key}=({lo}, {hi}) must satisfy 0 < low <= high <= 1")
