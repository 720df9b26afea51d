"""The validation gate (components.validate) and `tipsv2 data validate`.

A synthetic dataset passes; copies of its metadata with one defect each (duplicate keys,
null or too-long captions, skewed splits, too many rejects, missing classes, bad image
sizes) fail with the expectation named and the offending rows given. Great Expectations
is imported once per process (~3-5 s); each validation then takes a fraction of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.storage import Storage
from components.validate import (
    ValidationConfig,
    ValidationFailed,
    ValidationResult,
    load_config,
    validate,
)
from pipelines.cli import data as data_cli
from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.data.layout import (
    CARD_FILE,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    REJECTED_FILE,
    DatasetError,
    write_rejected,
)
from tipsv2_core.data.synth_dataset import write_synthetic_dataset

NUM_IMAGES = 200


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A synthetic dataset of the DVC pipeline's default size (every class covered)."""
    out = tmp_path_factory.mktemp("validate") / "good"
    return write_synthetic_dataset(out, num_images=NUM_IMAGES, seed=0, progress=False)


Rows = list[dict]


def craft(
    tmp_path: Path,
    good: Path,
    rows: Callable[[Rows], Rows] | None = None,
    card: Callable[[dict], None] | None = None,
    rejects: Rows | None = None,
) -> Path:
    """A copy of `good` (metadata and shards) with defects in its metadata.

    `rows` edits the manifest rows, `card` the card in place; `rejects` replaces
    rejected.parquet (None keeps the empty one). The card's counts follow the rows, as a
    writer that made these rows would have written them.
    """
    d = tmp_path / "crafted"
    d.mkdir(parents=True)
    for name in (MANIFEST_FILE, CARD_FILE, REJECTED_FILE, COMPLETE_FILE):
        shutil.copyfile(good / name, d / name)
    shutil.copytree(good / "shards", d / "shards")  # the gate opens every shard
    manifest = pq.read_table(d / MANIFEST_FILE).to_pylist()
    if rows is not None:
        manifest = rows(manifest)
        pq.write_table(pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA), d / MANIFEST_FILE)
    doc = json.loads((d / CARD_FILE).read_text())
    counts: dict[str, int] = {}
    for r in manifest:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    doc["counts"], doc["num_samples"] = counts, len(manifest)
    if card is not None:
        card(doc)
    (d / CARD_FILE).write_text(json.dumps(doc))
    if rejects is not None:
        write_rejected(d / REJECTED_FILE, rejects)
    return d


def failed(result: ValidationResult) -> dict[tuple[str, str | None], object]:
    """(expectation type, column) -> the failed CheckResult."""
    return {(c.expectation, c.kwargs.get("column")): c for c in result.failures}


def keys_of(check) -> list[str]:
    return [e["key"] for e in check.examples]


# ------------------------------------------------------------------------------ unit/integ


@pytest.mark.integration
def test_good_dataset_passes_and_writes_the_report(good, tmp_path):
    result = validate(good, out=tmp_path / "report")
    assert result.success, result.message()
    assert result.failures == ()
    names = {(c.batch, c.expectation, c.kwargs.get("column")) for c in result.checks}
    for expected in [
        ("manifest", "expect_column_values_to_be_unique", "key"),
        ("manifest", "expect_column_values_to_not_be_null", "caption_long"),
        ("manifest", "expect_column_value_lengths_to_be_between", "alt_text"),
        ("manifest", "expect_column_values_to_be_between", "width"),
        ("manifest", "expect_table_row_count_to_equal", None),
        ("classes", "expect_column_values_to_be_between", "samples"),
        ("summary", "expect_column_values_to_be_between", "split_fraction_val"),
        ("summary", "expect_column_values_to_be_between", "reject_rate"),
        ("summary", "expect_column_values_to_be_between", "duplicate_rate"),
    ]:
        assert expected in names
    doc = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert doc["success"] is True and doc["statistics"]["failed"] == 0
    assert doc["dataset_stats"]["num_samples"] == NUM_IMAGES
    assert set(doc["great_expectations"]) == {"manifest", "classes", "shards", "summary"}
    assert all(s["success"] for s in doc["great_expectations"].values())
    page = (tmp_path / "report" / "validation.html").read_text()
    assert "PASSED" in page and "expect_column_values_to_be_unique" in page
    # Row counts read as text, not as a quoted Python string.
    assert f"<td>0 of {NUM_IMAGES} rows</td>" in page and "&#x27;0 of" not in page
    result.raise_for_failure()  # no exception
    assert "validation passed" in result.message()


@pytest.mark.integration
def test_default_report_folder_is_inside_the_dataset(good, tmp_path):
    copy = craft(tmp_path, good)
    result = validate(copy)
    assert result.success and result.out == str(copy / "validation")
    assert (copy / "validation" / "validation.json").is_file()
    assert validate(copy, write=False).out is None


@pytest.mark.integration
def test_duplicate_keys_fail_with_the_keys(good, tmp_path):
    def dup(rows: Rows) -> Rows:
        rows[7]["key"] = rows[3]["key"]
        return rows

    bad = craft(tmp_path, good, rows=dup)
    dup_key = pq.read_table(bad / MANIFEST_FILE).column("key")[3].as_py()
    result = validate(bad, out=tmp_path / "r")
    assert not result.success
    check = failed(result)[("expect_column_values_to_be_unique", "key")]
    assert check.unexpected == 2 and check.evaluated == NUM_IMAGES
    assert keys_of(check) == [dup_key, dup_key]
    assert "expect_column_values_to_be_unique(column='key')" in result.message()
    assert dup_key in result.message()
    with pytest.raises(ValidationFailed, match="sample keys are unique"):
        result.raise_for_failure()
    page = (tmp_path / "r" / "validation.html").read_text()
    assert "FAILED" in page and dup_key in page


@pytest.mark.integration
def test_null_and_too_long_captions_fail_with_their_rows(good, tmp_path):
    def captions(rows: Rows) -> Rows:
        rows[5]["caption_medium"] = None
        rows[9]["caption_long"] = "a very long caption " * 500  # 10000 characters
        rows[11]["alt_text"] = ""
        return rows

    bad = craft(tmp_path, good, rows=captions)
    keys = pq.read_table(bad / MANIFEST_FILE).column("key").to_pylist()
    result = validate(bad, write=False)
    fails = failed(result)
    assert keys_of(fails[("expect_column_values_to_not_be_null", "caption_medium")]) == [keys[5]]
    too_long = fails[("expect_column_value_lengths_to_be_between", "caption_long")]
    assert keys_of(too_long) == [keys[9]] and too_long.kwargs["max_value"] == 8000
    assert keys_of(fails[("expect_column_value_lengths_to_be_between", "alt_text")]) == [keys[11]]
    assert len(fails) == 3, result.message()
    msg = result.message()
    assert "(10000 chars)" in msg and keys[9] in msg and keys[5] in msg


@pytest.mark.integration
def test_wrong_split_proportions_fail(good, tmp_path):
    def skew(rows: Rows) -> Rows:
        for r in rows[:80]:
            r["split"] = "val"
        return rows

    result = validate(craft(tmp_path, good, rows=skew), write=False)
    fails = failed(result)
    val = fails[("expect_column_values_to_be_between", "split_fraction_val")]
    assert val.batch == "summary" and val.observed > 0.4
    assert {e["split"] for e in val.examples} == {"train", "val", "test"}
    assert ("expect_column_values_to_be_between", "split_fraction_train") in fails
    assert "split 'val' holds" in result.message()


@pytest.mark.integration
def test_unknown_split_fails_with_the_rows(good, tmp_path):
    def odd(rows: Rows) -> Rows:
        rows[0]["split"] = "holdout"
        return rows

    bad = craft(tmp_path, good, rows=odd)
    key = pq.read_table(bad / MANIFEST_FILE).column("key")[0].as_py()
    check = failed(validate(bad, write=False))[("expect_column_values_to_be_in_set", "split")]
    assert check.examples == ({"split": "holdout", "key": key},)


@pytest.mark.integration
def test_too_many_rejects_fail_with_example_rejects(good, tmp_path):
    rejects = [{"key": f"web-{i}", "source": "web", "reason": "near_duplicate"} for i in range(150)]
    rejects += [{"key": f"web-b{i}", "source": "web", "reason": "too_small"} for i in range(100)]
    result = validate(craft(tmp_path, good, rejects=rejects), write=False)
    fails = failed(result)
    rate = fails[("expect_column_values_to_be_between", "reject_rate")]
    assert rate.observed == pytest.approx(250 / 450)
    assert rate.examples == (
        {"reason": "near_duplicate", "count": 150, "key": "web-0"},
        {"reason": "too_small", "count": 100, "key": "web-b0"},
    )
    dup = fails[("expect_column_values_to_be_between", "duplicate_rate")]
    assert dup.observed == pytest.approx(150 / 450)
    assert dup.examples == ({"reason": "near_duplicate", "count": 150, "key": "web-0"},)
    assert result.stats["rejects"] == {"near_duplicate": 150, "too_small": 100}
    # Looser thresholds let the same data through.
    loose = ValidationConfig(max_reject_rate=0.6, max_duplicate_rate=0.4)
    assert validate(craft(tmp_path / "b", good, rejects=rejects), loose, write=False).success


@pytest.mark.integration
def test_card_rejects_count_without_rejected_parquet(good, tmp_path):
    def card(doc: dict) -> None:
        doc["rejects"] = {"blurry": 300, "exact_duplicate": 10}

    bad = craft(tmp_path, good, card=card)
    (bad / REJECTED_FILE).unlink()
    result = validate(bad, write=False)
    check = failed(result)[("expect_column_values_to_be_between", "reject_rate")]
    assert check.observed == pytest.approx(310 / 510)
    assert check.examples == (
        {"reason": "blurry", "count": 300},
        {"reason": "exact_duplicate", "count": 10},
    )
    assert result.stats["duplicate_rate"] == pytest.approx(10 / 510)


@pytest.mark.integration
def test_class_coverage_names_missing_and_undeclared_classes(good, tmp_path):
    def relabel(rows: Rows) -> Rows:
        for r in rows:
            r["classes"] = ["dragon" if c == "star" else c for c in r["classes"]]
        return rows

    result = validate(craft(tmp_path, good, rows=relabel), write=False)
    fails = failed(result)
    coverage = fails[("expect_column_values_to_be_between", "samples")]
    assert coverage.examples == ({"samples": 0, "class": "star"},)
    declared = fails[("expect_column_values_to_be_in_set", "declared")]
    assert [e["class"] for e in declared.examples] == ["dragon"]
    assert result.stats["classes_without_samples"] == ["star"]
    off = ValidationConfig(class_coverage=False)
    assert validate(craft(tmp_path / "b", good, rows=relabel), off, write=False).success


@pytest.mark.integration
def test_image_sizes_and_row_count(good, tmp_path):
    def sizes(rows: Rows) -> Rows:
        rows[2]["width"] = 8
        rows[4]["height"] = 20000
        rows[6]["width"], rows[6]["height"] = 1000, 100  # aspect ratio 10
        return rows

    def card(doc: dict) -> None:
        doc["num_samples"] = NUM_IMAGES + 1

    bad = craft(tmp_path, good, rows=sizes, card=card)
    keys = pq.read_table(bad / MANIFEST_FILE).column("key").to_pylist()
    fails = failed(validate(bad, write=False))
    assert fails[("expect_column_values_to_be_between", "width")].examples == (
        {"width": 8, "key": keys[2]},
    )
    assert keys_of(fails[("expect_column_values_to_be_between", "height")]) == [keys[4]]
    aspect = fails[("expect_column_values_to_be_between", "aspect_ratio")]
    assert keys_of(aspect) == [keys[2], keys[4], keys[6]]  # 112/8, 20000/112, 1000/100
    assert fails[("expect_table_row_count_to_equal", None)].observed == NUM_IMAGES


@pytest.mark.integration
def test_duplicate_images_fail(good, tmp_path):
    def same(rows: Rows) -> Rows:
        rows[1]["sha256"] = rows[0]["sha256"]
        return rows

    result = validate(craft(tmp_path, good, rows=same), write=False)
    check = failed(result)[("expect_column_values_to_be_unique", "sha256")]
    assert check.unexpected == 2
    allowed = ValidationConfig(max_duplicate_image_rate=0.02)
    assert validate(craft(tmp_path / "b", good, rows=same), allowed, write=False).success


def test_incomplete_or_missing_dataset_is_refused(good, tmp_path):
    copy = craft(tmp_path, good)
    (copy / COMPLETE_FILE).unlink()
    with pytest.raises(DatasetError, match="incomplete dataset"):
        validate(copy)
    with pytest.raises(DatasetError, match="no such dataset"):
        validate(tmp_path / "nothing")


# ------------------------------------------------------------------------------ config


@pytest.mark.unit
def test_config_from_json_and_yaml_sections(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"max_reject_rate": 0.1, "examples": 3}))
    cfg = load_config(tmp_path / "c.json")
    assert cfg.max_reject_rate == 0.1 and cfg.examples == 3
    assert cfg.min_image_side == ValidationConfig().min_image_side
    (tmp_path / "p.yaml").write_text(
        "synth: {num_images: 5}\n"
        "validate:\n  caption_max_chars: 300\n  expected_splits: {train: 0.5, val: 0.5}\n"
        "  class_coverage: auto\n  duplicate_reasons: [dup, same_image]\n"
    )
    cfg = load_config(tmp_path / "p.yaml", section="validate")
    assert dict(cfg.caption_max_chars) == {
        "alt_text": 300,
        "caption_medium": 300,
        "caption_long": 300,
    }
    assert cfg.expected_splits == {"train": 0.5, "val": 0.5} and cfg.class_coverage is None
    assert cfg.duplicate_reasons == ("dup", "same_image")
    assert ValidationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="no section 'gate'"):
        load_config(tmp_path / "p.yaml", section="gate")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"max_reject_rat": 0.1}, "unknown validation settings \\['max_reject_rat'\\]"),
        ({"max_reject_rate": 1.5}, "max_reject_rate must be in \\[0, 1\\]"),
        ({"max_reject_rate": True}, "max_reject_rate: expected float, got True"),
        ({"min_samples": 2.5}, "min_samples: expected int, got 2.5"),
        ({"expected_splits": {"train": 0.5}}, "sum to 1"),
        ({"min_image_side": 100, "max_image_side": 50}, "min_image_side <= max_image_side"),
        ({"class_coverage": "yes"}, "true, false or auto"),
    ],
)
def test_bad_config_is_refused(doc, match):
    with pytest.raises(ValueError, match=match):
        ValidationConfig.from_dict(doc)


# ------------------------------------------------------------------------------ CLI


def tipsv2(*argv: str) -> tuple[int, str, str]:
    """Runs `tipsv2 data …` with the group's parser; returns (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="tipsv2")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = args.handler(args)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.integration
def test_cli_passes_and_fails_with_the_failed_expectations(good, tmp_path):
    rc, out, _ = tipsv2("data", "validate", "--data", str(good), "--out", str(tmp_path / "ok"))
    assert rc == 0 and "validation passed" in out

    def dup(rows: Rows) -> Rows:
        rows[1]["key"] = rows[0]["key"]
        rows[2]["caption_long"] = None
        return rows

    bad = craft(tmp_path, good, rows=dup)
    key = pq.read_table(bad / MANIFEST_FILE).column("key")
    (tmp_path / "cfg.yaml").write_text("validate:\n  examples: 2\n")
    rc, out, err = tipsv2(
        "data", "validate", "--data", bad.as_uri(), "--config", str(tmp_path / "cfg.yaml"),
        "--section", "validate", "--out", str(tmp_path / "bad"),
    )  # fmt: skip
    assert rc == 1 and out == ""
    # The key that moved also leaves its shard holding a sample the manifest lost.
    assert "validation FAILED: 3 of" in err
    assert "expect_column_values_to_be_unique(column='key')" in err and key[0].as_py() in err
    assert "expect_column_values_to_not_be_null(column='caption_long')" in err
    assert key[2].as_py() in err
    assert json.loads((tmp_path / "bad" / "validation.json").read_text())["success"] is False
    rc, _, err = tipsv2("data", "validate", "--data", str(good), "--section", "validate")
    assert rc == 2 and "--section needs --config" in err


@pytest.mark.integration
def test_console_script_exits_nonzero(good, tmp_path):
    """The real `tipsv2` entry point, as a pipeline stage runs it."""

    def dup(rows: Rows) -> Rows:
        rows[1]["key"] = rows[0]["key"]
        return rows

    bad = craft(tmp_path, good, rows=dup)
    exe = Path(sys.executable).with_name("tipsv2")
    env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}
    res = subprocess.run(
        [str(exe), "data", "validate", "--data", str(bad)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "expect_column_values_to_be_unique(column='key')" in res.stderr
    assert (bad / "validation" / "validation.html").is_file()


# ------------------------------------------------------------------------------ S3


@pytest.mark.integration
def test_validate_an_s3_dataset_reads_its_metadata_and_shards(good, tmp_path, s3_env, monkeypatch):
    # Explicit S3 variables: configure() leaves them (and a fixed tracking URI) alone.
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite://")
    s3 = Storage(environ=s3_env)
    s3.put_directory(craft(tmp_path, good), "s3://tipsv2/datasets/good")
    result = validate("s3://tipsv2/datasets/good")
    assert result.success, result.message()
    assert result.out == "s3://tipsv2/datasets/good/validation"
    assert s3.list_files("s3://tipsv2/datasets/good/validation") == [
        "validation.html",
        "validation.json",
    ]
    with pytest.raises(DatasetError, match="incomplete or missing dataset"):
        validate("s3://tipsv2/datasets/none")


# ------------------------------------------------------------------------------ shards


def shard_problems(result: ValidationResult) -> dict[str, str]:
    """{shard: problem} of the failed shards check."""
    check = failed(result)[("expect_column_values_to_be_in_set", "problem")]
    return {e["shard"]: e["problem"] for e in check.examples}


@pytest.mark.integration
def test_gate_opens_every_shard_the_manifest_names(good, tmp_path):
    bad = craft(tmp_path, good)
    val = sorted((bad / "shards").glob("val-*.tar"))[0]
    val.unlink()  # a deleted shard
    train = sorted((bad / "shards").glob("train-*.tar"))[0]
    data = train.read_bytes()
    train.write_bytes(data[: len(data) // 2])  # a truncated one
    result = validate(bad, write=False)
    assert not result.success
    problems = shard_problems(result)
    assert problems[f"shards/{val.name}"].startswith("missing")
    assert "truncated" in problems[f"shards/{train.name}"]
    assert result.stats["shards_with_problems"] == 2
    assert f"shards/{val.name}" in result.message()


@pytest.mark.integration
def test_gate_checks_shard_records_against_the_manifest(good, tmp_path):
    def rename(rows: Rows) -> Rows:
        rows[0]["key"] = "not-in-any-shard"
        return rows

    bad = craft(tmp_path, good, rows=rename)
    problems = shard_problems(validate(bad, write=False))
    ((_, problem),) = problems.items()
    assert "missing not-in-any-shard" in problem and "not in the manifest" in problem

    def elsewhere(rows: Rows) -> Rows:  # the manifest names a shard that is not there
        rows[0]["shard"] = "shards/train-999999.tar"
        return rows

    problems = shard_problems(validate(craft(tmp_path / "b", good, rows=elsewhere), write=False))
    assert problems["shards/train-999999.tar"].startswith("missing")


@pytest.mark.integration
def test_gate_decodes_samples_and_flags_one_caption_for_all(good, tmp_path):
    import tarfile

    bad = craft(tmp_path, good)
    shard = sorted((bad / "shards").glob("train-*.tar"))[0]
    with tarfile.open(shard) as tar:  # rewrite the shard with its first image garbled
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first_png = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".png"))
    m, blob = members[first_png]
    members[first_png] = (m, b"\x89PNG" + bytes(len(blob) - 4))
    with tarfile.open(shard, "w") as tar:
        for m, blob in members:
            tar.addfile(m, io.BytesIO(blob))
    problems = shard_problems(validate(bad, write=False))
    assert "undecodable" in problems[f"shards/{shard.name}"]

    def same_caption(rows: Rows) -> Rows:
        for r in rows:
            r["caption_long"] = "a picture."
        return rows

    result = validate(craft(tmp_path / "b", good, rows=same_caption), write=False)
    check = failed(result)[("expect_column_values_to_be_between", "distinct_caption_long")]
    assert check.observed == 1 and check.examples[0]["caption"] == "a picture."
    assert ("expect_column_values_to_be_between", "distinct_alt_text") not in failed(result)
