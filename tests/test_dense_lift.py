"""A short `demo` run on the `dense` world learns dense alignment: its zero-shot
segmentation beats the random-init encoder of the same variant by a stated margin, on
held-out images scored the way the learning curves score them, and the colour-only
oracle stays at chance on the same split (the world does not leak the labels through
colour). The full 1,000-step version is tests/test_demo_recipe.py (`long`)."""

from __future__ import annotations

import json

import pytest

from tipsv2_core.config import apply_overrides, validate
from tipsv2_core.data.synth_dataset import write_synthetic_dataset
from tipsv2_core.eval import colour_oracle
from tipsv2_core.eval.controls import random_init_model
from tipsv2_core.eval.readers import shard_eval_datasets
from tipsv2_core.recipes import get_recipe
from tipsv2_core.train.probe import Probe
from tipsv2_core.train.runs import pretrain

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STEPS = 150
MIOU_KEY = "probe/zeroshot_seg/miou"


def test_a_short_demo_run_lifts_zero_shot_segmentation_above_the_random_init_encoder(
    tmp_path,
):
    data = write_synthetic_dataset(tmp_path / "synth", 2500, image_size=112, progress=False)
    cfg = validate(
        apply_overrides(
            get_recipe("demo"),
            [
                f"data.path={data}",
                f"stages.0.steps={STEPS}",
                f"run.probe_every={STEPS}",
                "run.probe_images=200",
                f"run.checkpoint_every={STEPS}",
            ],
        )
    )
    run = tmp_path / "run"
    pretrain(cfg, run, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = next(r[MIOU_KEY] for r in rows if MIOU_KEY in r and r["step"] == STEPS)
    # The floor: a random-init nano14 on the same 200 val images, the same tokenizer.
    floor = Probe(cfg, run / "tokenizer.model")(random_init_model("nano14", seed=0))[MIOU_KEY]
    # Measured on 2 cores: 13.7 % (bf16, the rate decayed over the last 30 steps) against
    # 4.2 % for the random-init encoder and 4.2 % for the colour-only oracle (~60 s in
    # all); the 1,000-step demo reaches 42–47 %.
    assert trained >= 0.08, (trained, floor)
    assert trained >= 2 * floor, (trained, floor)

    train, val = shard_eval_datasets(data, "train").seg, shard_eval_datasets(data, "val").seg
    oracle = colour_oracle.evaluate(train, val)["miou"]
    assert oracle < 0.08 and trained >= 1.5 * oracle, (trained, oracle)
