"""Named training recipes: functions that return a complete `TrainConfig`.

- `demo`: a tiny model at 112 px that trains on 2 CPU cores in minutes (`make run`).
- `ablation_*`: the demo with one switch flipped, for the paper's ablations.
- `b14`, `l14`, `so400m14`, `g14`: paper scale, two resolution stages (low-res 224/98 px,
  then high-res 448/140 px; ViT-g: 90k steps at batch 8192, then 9k at 4096, Adafactor).
  Hyper-parameters the paper does not report are marked [INF] in tipsv2_core/config.py.
- `distill_demo`: distillation of a demo teacher into a randomly initialised student.
"""

from __future__ import annotations

from collections.abc import Callable

from tipsv2_core.config import (
    DataCfg,
    EMACfg,
    HeadCfg,
    LossCfg,
    ModelCfg,
    OptimCfg,
    RunCfg,
    StageCfg,
    TrainConfig,
)


def demo() -> TrainConfig:
    """nano14 at 112 px, batch 32, 1,100 steps in bf16: a few minutes on 2 CPU cores.

    Departures from the paper's weights, each measured on this recipe: at batch 32 L_CLIP
    is a weak anchor, and with the head-only teacher the encoder fell into the constant
    solution of the self-distillation losses (DINO and iBOT++ at ln K, L_CLIP at ln B)
    within ~60 steps; weighting L_CLIP ×4 (equivalently α, β ÷ 4 under Adam) and ramping
    α, β in over the first 30 % of steps keeps every term learning. On the `dense` world
    the class words are learnt only after a plateau of ~350 steps (CLS zero-shot class
    accuracy at chance until then), so the run must be long enough to climb past it.
    The run is probed every 100 steps (learning curves).

    Two more departures, for the dense task (README, "Learning dense alignment", item 10):
    an extra L_CLIP on the mean of the patch tokens (`loss.pooled_clip_weight`, the one
    term that writes the text into each patch's own features; zero-shot mIoU at 112 px
    5.0 → 10.9 / 10.8 % on two seeds), and the whole image as the global view (every
    alt-text names every object: a crop that cuts one off makes a wrong caption; with the
    pooled term 8.1 % with the paper's crops).

    The learning rate is held at 1e-3 after the warm-up (item 11: at 600 steps a cosine
    from the start has brought the rate down while the patches still learn) and decays
    over the last 20 % of the steps only (item 14: the final weights are then not one
    noisy sample of a constant-rate trajectory).

    nano14 embeds each patch with a small conv stem (VisionConfig.conv_stem; item 13):
    30.4 / 29.0 % at 600 steps on two seeds, against 16.9 / 15.5 % with one linear map.

    The step runs under bf16 autocast (item 14; `run.precision`): 1.15–1.26× faster on a
    CPU with AVX512-BF16 or AMX (bench/bf16.py; more on a GPU); at 600 steps it scored
    34.8 / 36.9 % against fp32's 30.4 / 29.0 %. On a CPU without native bf16 it is
    emulated and slower: `--set run.precision=fp32` there.

    Two local crops, not four (item 15): the DINO loss they feed sits at ~6.88 against
    ln K = 6.93 all run at this batch, and the loop without two of them runs ~1.1× faster.
    1,100 steps with two crops cost less time than 1,000 with four (288 against 291–336 s
    in the plain loop) and scored 44.4 / 43.8 % on two seeds, against 38.9 / 41.4 % (and
    42.0 / 47.3 % before the fused optimiser, a rounding-level change) with four: within
    the run-to-run spread, so the choice buys `make run` time, not accuracy.

    The paper's EMA centre and teacher temperatures are kept, though at batch 32 they leave
    the self-distillation heads near their uniform solution (item 16; bench/ssl_heads.py):
    Sinkhorn-Knopp centring with a sharper teacher makes them learn, but moved zero-shot
    mIoU by +1.4 ± 2.3 points over 3 seeds for ~7 % more step time, and iBOT++ beat iBOT
    by +0.6 ± 0.8 points with the EMA centre and −0.6 ± 5.8 with Sinkhorn-Knopp.

    A full EMA copy of the encoder (TIPS), not TIPSv2's head-only EMA (item 18;
    bench/ablation.py): with the head-only teacher, which is the student's own encoder,
    the DINO targets stay near ln K at this batch (6.86–6.88 at the end on 3 seeds); a
    lagged encoder copy gives the heads targets they learn from (DINO 6.11–6.54) and
    scored 46.6 / 47.1 / 48.3 % zero-shot mIoU against 42.1 / 43.1 / 48.0 % (+2.9 ± 2.3
    points; the spread across seeds 0.9 against 3.1). At nano14 its extra teacher pass
    costs no measurable step time (0.32–0.38 s against 0.34–0.38 s) and 0.57M parameters.
    """
    return TrainConfig(
        recipe="demo",
        model=ModelCfg(variant="nano14"),
        heads=HeadCfg(out_dim=1024, hidden_dim=256, bottleneck_dim=64),
        data=DataCfg(
            num_local=2,
            text_max_len=48,
            tokenizer_vocab=1000,
            workers=2,
            global_scale=(1.0, 1.0),
        ),
        loss=LossCfg(clip_weight=4.0, ssl_warmup_frac=0.3, pooled_clip_weight=4.0),
        ema=EMACfg(mode="full"),
        optim=OptimCfg(
            lr=1e-3,
            min_lr=1e-5,
            warmup_frac=0.05,
            decay_frac=0.2,
            weight_decay=0.02,
            weight_decay_end=0.05,
        ),
        run=RunCfg(
            precision="bf16", checkpoint_every=200, log_every=10, probe_every=100, probe_images=100
        ),
        stages=[StageCfg("low_res", steps=1100, batch_size=32, global_size=112, local_size=56)],
    )


def _ablation(name: str, **changes: str) -> Callable[[], TrainConfig]:
    def make() -> TrainConfig:
        from tipsv2_core.config import apply_overrides

        cfg = demo()
        cfg.recipe = name
        return apply_overrides(cfg, [f"{k}={v}" for k, v in changes.items()])

    make.__doc__ = f"demo with {changes}"
    return make


def _paper(variant: str, low_steps: int, high_steps: int) -> Callable[[], TrainConfig]:
    def make() -> TrainConfig:
        return TrainConfig(
            recipe=variant,
            model=ModelCfg(variant=variant),
            # One head shared by the CLS and patch losses: with K = 32768 it has 14.7M
            # parameters, and B/14's head-only EMA then maintains 42.7 % fewer vision+head
            # parameters than full EMA, the paper's "42 %" (two heads would give 37.3 %).
            heads=HeadCfg(out_dim=32768, shared=True),
            data=DataCfg(num_local=6, workers=8),
            optim=OptimCfg(name="adafactor", lr=1e-3, min_lr=1e-6, warmup_frac=0.05),
            run=RunCfg(checkpoint_every=1000, keep_checkpoints=3, log_every=50),
            stages=[
                StageCfg(
                    "low_res", steps=low_steps, batch_size=8192, global_size=224, local_size=98
                ),
                StageCfg(
                    "high_res", steps=high_steps, batch_size=4096, global_size=448, local_size=140
                ),
            ],
        )

    return make


RECIPES: dict[str, Callable[[], TrainConfig]] = {
    "demo": demo,
    "ablation_ibot": _ablation("ablation_ibot", **{"loss.ibot_mode": "ibot"}),
    "ablation_head_only_ema": _ablation("ablation_head_only_ema", **{"ema.mode": "head_only"}),
    "ablation_one_cls": _ablation("ablation_one_cls", **{"data.caption_strategy": "one_cls_multi"}),
    "ablation_two_cls_medium": _ablation(
        "ablation_two_cls_medium", **{"data.caption_strategy": "two_cls_medium"}
    ),
    "ablation_alt_only": _ablation("ablation_alt_only", **{"data.caption_strategy": "alt_only"}),
    "ablation_long_only": _ablation("ablation_long_only", **{"data.caption_strategy": "long_only"}),
    "ablation_no_mask": _ablation("ablation_no_mask", **{"data.mask_ratio": "0.0"}),
    # Only g is pretrained in the paper; the other sizes are distilled from it. Their
    # pretraining recipes use the same schedule for from-scratch runs and ablations.
    "b14": _paper("b14", 90_000, 9_000),
    "l14": _paper("l14", 90_000, 9_000),
    "so400m14": _paper("so400m14", 90_000, 9_000),
    "g14": _paper("g14", 90_000, 9_000),
}


def distill_demo() -> TrainConfig:
    """The demo teacher into a randomly initialised nano14 vision encoder, 200 steps.

    The student's text tower starts from the teacher's (the paper's Tab. 2 row 5,
    "pre/train": at scale the text tower's start hardly matters). At this budget it does:
    zero-shot mIoU 34.6 % against 19.8 % from a random text tower at 300 steps, 12.0 %
    against 0.8 % at 100 (README, "Learning dense alignment", item 14). 200 steps (23.2 %)
    cost `make run` ~30 s less than 300. A student whose text tower has another shape
    than the teacher's trains it from scratch.
    """
    cfg = demo()
    cfg.recipe = "distill_demo"
    cfg.model.variant = "nano14"
    cfg.stages = [StageCfg("low_res", steps=200, batch_size=32, global_size=112, local_size=56)]
    cfg.data.num_local = 0  # distillation uses one unmasked view
    cfg.distill.init_text_from_teacher = True
    return cfg


DISTILL_RECIPES: dict[str, Callable[[], TrainConfig]] = {"distill_demo": distill_demo}


def get_recipe(name: str, distill: bool = False) -> TrainConfig:
    table = DISTILL_RECIPES if distill else RECIPES
    if name not in table:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(table)}")
    return table[name]()
