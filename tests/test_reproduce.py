"""`tipsv2 reproduce`: a model trained, evaluated, exported and registered, then trained
again in a fresh home from its registry entry alone (its own data, run and export deleted),
with identical weights and matching metrics; a tampered data version is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.reproduce.data import DataMismatch, restore_data
from components.reproduce.source import SourceError, check_commit, find_repository

REPO = Path(__file__).resolve().parents[1]
TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))
EVAL = {"tasks": ["zeroshot_seg", "retrieval"], "limit": 4, "image_size": 112, "eval_size": 112}


def _synth(out: Path, seed: int = 0) -> Path:
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    return write_synthetic_dataset(
        out, 40, image_size=112, seed=seed, shard_size=20, progress=False
    )


@pytest.mark.unit
def test_unknown_and_dirty_commits_are_refused():
    repo = find_repository(REPO)
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert check_commit(repo, head, "false") == head
    with pytest.raises(SourceError, match="is not in the repository"):
        check_commit(repo, "0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(SourceError, match="uncommitted changes"):
        check_commit(repo, head, "true")
    with pytest.raises(SourceError, match="records no git commit"):
        check_commit(repo, "unknown")


@pytest.mark.integration
def test_a_given_dataset_of_another_version_is_refused(tmp_path):
    from components.versioning import data_version

    recorded = _synth(tmp_path / "ds")
    other = _synth(tmp_path / "other", seed=1)
    entry = {"uri": str(tmp_path / "gone"), "version": data_version(recorded), "name": "ds"}
    assert restore_data(entry, tmp_path, str(recorded)) == (recorded, "given")
    with pytest.raises(DataMismatch, match="but the model was trained on"):
        restore_data(entry, tmp_path, str(other))


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """models:/repro-test/1: trained in home A, which is then deleted but for MLflow."""
    from components.registry import register_export
    from components.steps.evaluate import evaluate_model
    from components.steps.release import export_model
    from components.steps.train import train_model
    from components.tokenizer import build_tokenizer
    from components.versioning import data_version

    root = tmp_path_factory.mktemp("repro")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    home = root / "home-a"
    data = _synth(home / "data" / "dataset")
    build_tokenizer(data, home / "tok", vocab_size=300)
    version = data_version(data)
    run = home / "run"
    train_model(
        "pretrain", str(run), str(data), str(home / "tok" / "tokenizer.model"),
        steps=3, batch_size=8, overrides=["data.workers=0"], version=version, track=False,
    )  # fmt: skip
    doc = evaluate_model(str(run), str(data), str(home / "report.html"), track=False, **EVAL)
    export_model(str(run), str(home / "export"), [112])
    reg = register_export(
        home / "export", "repro-test", doc["metrics"], data_version=version,
        eval_data_version=version, tracking_uri=tracking, eval_settings=EVAL,
    )  # fmt: skip
    return {"root": root, "home": home, "tracking": tracking, "reg": reg, "data": data}


def _reproduce(*args: str, home: Path, tracking: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TIPSV2_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [TIPSV2, "reproduce", *args, "--tracking-uri", tracking, "--json"],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.long
def test_reproduce_from_the_registry_alone_gives_identical_weights(registered):
    shutil.rmtree(registered["home"])  # data, run and export: only MLflow is left
    fresh = registered["root"] / "home-b"
    done = _reproduce("models:/repro-test@challenger", home=fresh, tracking=registered["tracking"])
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["passed"], report["failures"]
    assert report["data"]["how"] == "re-synthesised"
    assert report["weights"]["identical"] and report["weights"]["tensors"] > 10
    names = {m["name"] for m in report["metrics"]}
    assert any(n.startswith("eval/zeroshot_seg/") for n in names)
    assert any(n.startswith("train/") and n.endswith("loss") for n in names)
    assert all(m["delta"] == 0.0 for m in report["metrics"]), report["metrics"]
    assert "weights: identical" in done.stdout and "PASSED" in done.stdout
    assert Path(report["out"]).is_relative_to(fresh)

    from mlflow import MlflowClient

    run = MlflowClient(registered["tracking"]).get_run(report["run_id"])
    assert run.data.tags["reproduces_run_id"] == registered["reg"].run_id
    assert run.data.tags["reproduction_passed"] == "true"
    assert run.data.metrics["reproduce/passed"] == 1.0

    # The recorded data path now holds another dataset: refused before any training.
    _synth(registered["home"] / "data" / "dataset", seed=1)
    done = _reproduce("models:/repro-test/1", home=fresh, tracking=registered["tracking"])
    assert done.returncode == 2, done.stdout + done.stderr
    assert "but the model was trained on" in done.stderr
    assert "recorded dataset was changed" in done.stderr


@pytest.mark.unit
def test_a_partial_check_cuts_the_stages_and_deltas_are_judged_by_the_tolerance():
    from components.reproduce.compare import compare_metrics, within
    from components.reproduce.run import _is_timing, _stages_for

    config = {"stages": [{"name": "a", "steps": 5}, {"name": "b", "steps": 5}], "seed": 0}
    assert _stages_for(config, 7)["stages"] == [
        {"name": "a", "steps": 5},
        {"name": "b", "steps": 2},
    ]
    assert _stages_for(config, 3)["stages"] == [{"name": "a", "steps": 3}]
    rows = compare_metrics({"m": 1.0, "n": 2.0, "gone": 1.0}, {"m": 1.0, "n": 2.5})
    assert [(r.name, r.delta) for r in rows] == [("gone", None), ("m", 0.0), ("n", 0.5)]
    assert within(rows, 0.1) == ["gone", "n"] and within(rows, 1.0) == ["gone"]
    assert _is_timing("train/images_per_s") and _is_timing("train/step_time_s")
    assert not _is_timing("train/loss") and not _is_timing("train/ibot_loss")
