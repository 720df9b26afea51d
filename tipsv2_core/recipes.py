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
    HeadCfg,
    LossCfg,
    ModelCfg,
    OptimCfg,
    RunCfg,
    StageCfg,
    TrainConfig,
)


def demo() -> TrainConfig:
    """nano14 at 112 px, batch 32, 600 steps: a few minutes on 2 CPU cores.

    Departures from the paper's weights, each measured on this recipe: at batch 32 L_CLIP
    is a weak anchor, and with the head-only teacher the encoder fell into the constant
    solution of the self-distillation losses (DINO and iBOT++ at ln K, L_CLIP at ln B)
    within ~60 steps; weighting L_CLIP ×4 (equivalently α, β ÷ 4 under Adam) and ramping
    α, β in over the first 30 % of steps keeps every term learning. On the `dense` world
    the class words are learnt only after a plateau of ~350 steps (CLS zero-shot class
    accuracy at chance until then, 32–36 % at step 600 with a learning rate of 5e-4 or
    1e-3), hence 600 steps. The run is probed every 100 steps (learning curves).

    Two more departures, for the dense task (README, "Learning dense alignment", item 10):
    an extra L_CLIP on the mean of the patch tokens (`loss.pooled_clip_weight`, the one
    term that writes the text into each patch's own features; zero-shot mIoU at 112 px
    5.0 → 10.9 / 10.8 % on two seeds), and the whole image as the global view (every
    alt-text names every object: a crop that cuts one off makes a wrong caption; with the
    pooled term 8.1 % with the paper's crops).

    And a constant learning rate of 1e-3 after the warm-up instead of a cosine decay
    (item 11): at 600 steps the patches are still learning when a cosine has already
    brought the rate down; 10.9 % → 13.1–20.8 % on three seeds (mean 17.5 %).

    600 steps is what `make run`'s 10 minutes on 2 cores afford; the curve keeps climbing
    beyond (31 % at 1,200 steps before the conv stem, item 12), so a longer run pays:
    `stages.0.steps=N`.

    The variant itself changed last (item 13): nano14 now embeds each patch with a small
    conv stem (VisionConfig.conv_stem) instead of one linear map; the same 600 steps then
    reach 30.4 / 29.0 % on two seeds, against 16.9 / 15.5 % with the linear embedding.
    """
    return TrainConfig(
        recipe="demo",
        model=ModelCfg(variant="nano14"),
        heads=HeadCfg(out_dim=1024, hidden_dim=256, bottleneck_dim=64),
        data=DataCfg(
            num_local=4,
            text_max_len=48,
            tokenizer_vocab=1000,
            workers=2,
            global_scale=(1.0, 1.0),
        ),
        loss=LossCfg(clip_weight=4.0, ssl_warmup_frac=0.3, pooled_clip_weight=4.0),
        optim=OptimCfg(
            lr=1e-3, min_lr=1e-3, warmup_frac=0.05, weight_decay=0.02, weight_decay_end=0.05
        ),
        run=RunCfg(checkpoint_every=200, log_every=10, probe_every=100, probe_images=100),
        stages=[StageCfg("low_res", steps=600, batch_size=32, global_size=112, local_size=56)],
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
    "ablation_full_ema": _ablation("ablation_full_ema", **{"ema.mode": "full"}),
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
    cfg = demo()
    cfg.recipe = "distill_demo"
    cfg.model.variant = "nano14"
    cfg.stages = [StageCfg("low_res", steps=100, batch_size=32, global_size=112, local_size=56)]
    cfg.data.num_local = 0  # distillation uses one unmasked view
    return cfg


DISTILL_RECIPES: dict[str, Callable[[], TrainConfig]] = {"distill_demo": distill_demo}


def get_recipe(name: str, distill: bool = False) -> TrainConfig:
    table = DISTILL_RECIPES if distill else RECIPES
    if name not in table:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(table)}")
    return table[name]()
