"""tipsv2_core.schema: dicts, files and `--set` strings into typed configs, with errors
that name the key and the expected type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import pytest

from tipsv2_core.schema import ConfigError, build, convert, parse_mapping, set_path

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Rule:
    metric: str
    margin: float = 0.0


@dataclass(frozen=True)
class Gate:
    primary: str
    rules: tuple[Rule, ...] = ()
    size: tuple[int, int] = (1, 2)
    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = None
    splits: Mapping[str, float] = field(default_factory=lambda: {"train": 1.0})
    strict: bool = True


@dataclass
class Stage:
    steps: int = 1


@dataclass
class Tree:
    stages: list[Stage] = field(default_factory=lambda: [Stage()])
    gate: Stage = field(default_factory=Stage)
    scale: tuple[float, float] = (0.5, 1.0)
    lr: float = 1e-3
    grid: int | None = None


class MyError(Exception):
    pass


def test_build_follows_nested_types():
    gate = build(
        Gate,
        {
            "primary": "m",
            "rules": [{"metric": "a", "margin": 1}],
            "size": [3, 4],
            "mode": "slow",
            "limit": None,
            "splits": {"train": 1},
        },
    )
    assert gate.rules == (Rule("a", 1.0),) and isinstance(gate.rules[0].margin, float)
    assert gate.size == (3, 4) and gate.mode == "slow" and gate.limit is None
    assert gate.splits == {"train": 1.0} and gate.strict is True


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"primary": "m", "primry": "m"}, "unknown config key(s) ['primry']; valid keys here: "),
        ({"primary": "m", "rules": [{"metric": "a", "margn": 1}]}, "['rules.0.margn']"),
        ({}, "missing required key(s) ['primary']"),
        ({"primary": 3}, "primary: expected str, got 3"),
        ({"primary": "m", "strict": 1}, "strict: expected bool, got 1"),
        ({"primary": "m", "limit": True}, "limit: expected int, got True"),
        ({"primary": "m", "limit": 2.5}, "limit: expected int, got 2.5"),
        ({"primary": "m", "size": [1]}, "size: expected 2 values, got [1]"),
        ({"primary": "m", "size": "1,2"}, "size: expected a list"),
        ({"primary": "m", "mode": "warp"}, "mode: expected one of ('fast', 'slow'), got 'warp'"),
        ({"primary": "m", "splits": {"train": "all"}}, "splits.train: expected float"),
        ({"primary": "m", "rules": [{"metric": "a", "margin": False}]}, "rules.0.margin"),
    ],
)
def test_build_names_the_bad_key_and_the_expected_type(doc, message):
    with pytest.raises(ConfigError) as e:
        build(Gate, doc)
    assert message in str(e.value)


def test_the_caller_chooses_the_error_type_and_the_wording():
    with pytest.raises(MyError, match=r"unknown gate key\(s\) \['x'\]"):
        build(Gate, {"primary": "m", "x": 1}, what="gate key(s)", error=MyError)
    with pytest.raises(MyError, match="limit: expected int"):
        build(Gate, {"primary": "m", "limit": "many"}, error=MyError)


def test_whole_floats_are_ints_and_ints_are_floats():
    assert build(Gate, {"primary": "m", "limit": 4.0}).limit == 4
    assert convert("lr", 1, float) == 1.0


def test_set_path_parses_command_line_values():
    tree = Tree()
    set_path(tree, "stages.0.steps", "7")
    set_path(tree, "scale", "0.25,1.0")
    set_path(tree, "lr", "3e-4")
    set_path(tree, "grid", "none")
    assert tree.stages[0].steps == 7 and tree.scale == (0.25, 1.0)
    assert tree.lr == 3e-4 and tree.grid is None
    set_path(tree, "grid", "16")
    assert tree.grid == 16


@pytest.mark.parametrize(
    ("dotted", "raw", "message"),
    [
        ("gate.stepz", "1", "unknown key 'gate.stepz'; valid keys here: steps"),
        ("stages.1.steps", "1", "unknown key 'stages.1': index must be 0..0"),
        ("gate", "1", "'gate' is a whole section"),
        ("stages.0.steps", "ten", "stages.0.steps: expected int, got 'ten'"),
        ("stages.0.steps", "1.5", "stages.0.steps: expected int, got '1.5'"),
        ("scale", "0.5", "scale: expected 2 comma-separated values"),
    ],
)
def test_set_path_names_the_bad_key(dotted, raw, message):
    with pytest.raises(ConfigError) as e:
        set_path(Tree(), dotted, raw)
    assert message in str(e.value)


def test_parse_mapping_reads_json_and_yaml_and_names_the_file():
    assert parse_mapping('{"a": 1}', "c.json") == {"a": 1}
    assert parse_mapping("a: 1\nb: [x, y]\n", "c.yaml") == {"a": 1, "b": ["x", "y"]}
    assert parse_mapping("", "c.yml") == {}
    assert parse_mapping("validate:\n  a: 1\n", "params.yaml", section="validate") == {"a": 1}
    with pytest.raises(ConfigError, match="c.json: invalid JSON"):
        parse_mapping("{oops", "c.json")
    with pytest.raises(ConfigError, match="c.yaml: invalid YAML"):
        parse_mapping("a: [1", "c.yaml")
    with pytest.raises(ConfigError, match="params.yaml: no section 'gate'"):
        parse_mapping("validate: {}\n", "params.yaml", section="gate")
    with pytest.raises(MyError, match="c.yaml: expected a mapping of keys to values, got list"):
        parse_mapping("- 1\n- 2\n", "c.yaml", error=MyError)
