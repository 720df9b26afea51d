"""The Ray job entry point's contract with the step that submits it (components.ray_jobs):
the options survive the command line, and a config survives its JSON."""

from __future__ import annotations

import json

import pytest

from components.train_entry import JobOptions, options_of, parser
from tipsv2_core.config import apply_overrides, from_dict, to_dict
from tipsv2_core.recipes import get_recipe

pytestmark = pytest.mark.unit
REQUIRED = ["--config", "c.json", "--out", "run", "--result", "r.json"]


@pytest.mark.parametrize(
    "options",
    [
        JobOptions(),
        JobOptions(workers=4, gpus_per_worker=0.5, experiment="sweep", track=False),
    ],
)
def test_options_round_trip_through_the_command_line(options):
    args = parser().parse_args([*REQUIRED, *options.argv()])
    assert options_of(args) == options


def test_the_shipped_config_is_the_resolved_one():
    """What the step validated is what the job trains: to_dict JSON rebuilds it exactly."""
    cfg = apply_overrides(
        get_recipe("distill_demo", distill=True),
        ["stages.0.steps=3", "data.global_scale=0.4,1.0", "model.pos_grid=16"],
    )
    shipped = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(shipped) == cfg
