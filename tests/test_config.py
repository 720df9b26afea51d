"""Typed configs, overrides, recipes and the dry run."""

from __future__ import annotations

import pytest

from tipsv2_core.config import ConfigError, apply_overrides, from_dict, to_dict, validate
from tipsv2_core.recipes import RECIPES, get_recipe
from tipsv2_core.train.dry_run import dry_run

pytestmark = pytest.mark.unit


def test_overrides_are_typed():
    cfg = apply_overrides(
        get_recipe("demo"),
        [
            "stages.0.steps=7",
            "loss.ibot_mode=ibot",
            "data.global_scale=0.5,1.0",
            "heads.shared=true",
            "model.pos_grid=16",
            "model.pos_grid=none",
            "optim.lr=3e-4",
        ],
    )
    assert cfg.stages[0].steps == 7 and cfg.loss.ibot_mode == "ibot"
    assert cfg.data.global_scale == (0.5, 1.0) and cfg.heads.shared is True
    assert cfg.model.pos_grid is None and cfg.optim.lr == 3e-4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.foo=1", "unknown key 'loss.foo'; valid keys here: clip_weight"),
        ("stages.0.steps=ten", "stages.0.steps: expected int, got 'ten'"),
        ("stages.3.steps=1", "unknown key 'stages.3'"),
        ("optim=adamw", "'optim' is a whole section"),
        ("data.global_scale=0.5", "data.global_scale: expected 2 comma-separated values"),
        ("heads.shared=maybe", "heads.shared: expected bool"),
        ("nonsense", "not of the form key=value"),
        ("stages.0.steps=1.5", "expected int"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(get_recipe("demo"), [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.mask_ratio=1.0", "data.mask_ratio"),
        ("stages.0.global_size=100", "stages.0.global_size=100 must be a multiple of 14"),
        ("ema.mode=half", "ema.mode"),
        ("data.caption_strategy=gemini", "data.caption_strategy"),
        ("model.variant=h14", "unknown variant"),
    ],
)
def test_validation_names_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        validate(apply_overrides(get_recipe("demo"), [override]))


def test_config_round_trips_through_a_dict():
    cfg = apply_overrides(get_recipe("g14"), ["stages.1.steps=5", "loss.centering=sinkhorn"])
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_every_recipe_validates_and_paper_recipes_have_two_stages():
    for name in RECIPES:
        validate(get_recipe(name))
    g = get_recipe("g14")
    assert [(s.global_size, s.local_size) for s in g.stages] == [(224, 98), (448, 140)]
    assert [(s.steps, s.batch_size) for s in g.stages] == [(90_000, 8192), (9_000, 4096)]
    assert g.optim.name == "adafactor" and g.data.num_local == 6
    with pytest.raises(ValueError, match="unknown recipe 'x'"):
        get_recipe("x")


def test_dry_run_on_meta_device():
    report = dry_run(get_recipe("b14"))
    assert report["parameters"]["vision"] == 86_316_288
    low, high = report["stages"]
    assert low["flops_per_image"] > 1e11 and high["flops_per_image"] > 2.5 * low["flops_per_image"]
    assert 0 < low["memory_estimate_bytes"] < high["memory_estimate_bytes"]
