"""`tipsv2 data synth|info`: the command group, parsed and run as the CLI does."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from pipelines.cli import data
from tipsv2_core.data.shards import DatasetError, iter_samples, open_dataset

pytestmark = pytest.mark.integration


def tipsv2(*argv: str) -> int:
    """Parses and runs a `tipsv2 data …` command line with the group's own parser."""
    parser = argparse.ArgumentParser(prog="tipsv2")
    data.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, str]:
    """(dataset written by `tipsv2 data synth`, what the command printed)."""
    out = tmp_path_factory.mktemp("cli") / "synth"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = tipsv2(
            "data", "synth", "--num-images", "24", "--image-size", "112", "--out", out.as_uri(),
            "--seed", "3", "--shard-size", "5", "--no-progress",
        )  # fmt: skip
    assert rc == 0
    return out, printed.getvalue()


def test_synth_writes_a_dataset(made):
    out, printed = made
    assert f"wrote {out}: 24 samples" in printed
    info = open_dataset(out)
    assert len(info) == 24 and info.card["generator"]["seed"] == 3
    assert max(len(info.keys_by_shard()[s]) for s in info.shards()) == 5
    assert sum(1 for _ in iter_samples(out)) == 24


def test_info_prints_counts_and_class_names(made, capsys):
    out, _ = made
    assert tipsv2("data", "info", str(out)) == 0
    text = capsys.readouterr().out
    for split, n in open_dataset(out).counts.items():
        assert re.search(rf"^  {split} +{n} ", text, re.M), text
    assert "house" in text and "fish" in text and "samples   24" in text
    assert tipsv2("data", "info", out.as_uri(), "--json") == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 24


def test_errors_name_the_problem(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "manifest.parquet").write_bytes(b"")
    with pytest.raises(DatasetError, match="incomplete"):
        tipsv2("data", "info", str(tmp_path / "half"))
    with pytest.raises(ValueError, match="100"):
        tipsv2(
            "data",
            "synth",
            "--num-images",
            "2",
            "--image-size",
            "100",
            "--out",
            str(tmp_path / "x"),
        )
    with pytest.raises(DatasetError, match="components layer"):
        tipsv2("data", "synth", "--num-images", "2", "--out", "s3://bucket/ds")
    with pytest.raises(SystemExit):
        tipsv2("data", "synth", "--num-images", "2", "--out", "x", "--splits", "0.5,0.5")
