"""The DVC pipeline (dvc.yaml + params.yaml) and components.versioning.

Integration: a temporary git clone-alike of the repository's DVC project (never the
repository itself) runs `dvc repro tokenizer` (the data half: synth -> validate ->
tokenizer) with the default parameters, pushes to the real S3 gateway of a local stack,
and an empty clone pulls the same bytes back; `dvc exp run -S` gives a new dataset hash;
a failing gate stops the pipeline; and the whole pipeline (train -> distill -> eval ->
export) runs at smoke size as an experiment that `dvc exp show` compares. Unit: the
committed DVC files, .gitignore, and `dataset_version`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from components.settings import read_env_file
from components.storage import Storage
from components.versioning import (
    LOCAL_REMOTE,
    S3_REMOTE,
    Remote,
    VersioningError,
    configure_remote,
    dataset_version,
    dvc_environment,
    pull,
    push,
    run_dvc,
)

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore")
PROJECT_FILES += (".gitignore",)
CODE = "tipsv2_core"  # training's code version is a dependency of its stages
DATA_STAGES = ["synth", "validate", "tokenizer"]
STUDENT = "nano14"
ALL_STAGES = [*DATA_STAGES, "train", f"distill@{STUDENT}", "eval-teacher",
              f"eval-student@{STUDENT}", "export"]  # fmt: skip
# The whole pipeline in about a minute and a half: a few steps, a few images evaluated.
SMOKE = ["train.steps=4", "train.batch_size=8", "distill.steps=4", "distill.batch_size=8",
         "eval.limit=8"]  # fmt: skip
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "tipsv2-test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "tipsv2-test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def tree_digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())


def out_md5(repo: Path, stage: str) -> str:
    return lock(repo)["stages"][stage]["outs"][0]["md5"]


# ------------------------------------------------------------------------------ unit


@pytest.mark.unit
def test_committed_dvc_config_has_no_credentials_or_machine_paths():
    text = (ROOT / ".dvc" / "config").read_text()
    for needle in ("127.0.0.1", "localhost", "access_key", "secret", "endpointurl"):
        assert needle not in text
    for needle in ("/work", "/home", "/root", "/tmp", "/var"):
        assert needle not in text
    assert "remote = local" in text and "analytics = false" in text
    assert "url = ../.tipsv2/dvc-remote" in text and "url = s3://tipsv2/dvc" in text
    assert (ROOT / ".dvc" / ".gitignore").read_text().split() == ["/config.local", "/tmp", "/cache"]


@pytest.mark.unit
def test_pipeline_stages_call_the_cli_with_small_defaults():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [*DATA_STAGES, "train", "distill", "eval-teacher", "eval-student",
                            "export"]  # fmt: skip
    for name in DATA_STAGES:
        assert stages[name]["cmd"].startswith("tipsv2 data "), name
        assert stages[name]["outs"] == [f"data/{name}" if name != "validate" else "data/validation"]
    assert "data/validation" in stages["tokenizer"]["deps"]  # the gate comes first
    assert stages["train"]["cmd"].startswith("tipsv2 train ")
    assert {"data/synth", "data/tokenizer", CODE} <= set(stages["train"]["deps"])
    # One distillation and one evaluation per student, as the DAG's ParallelFor.
    for name in ("distill", "eval-student"):
        assert stages[name]["foreach"] == "${distill.students}"
    assert stages["distill"]["do"]["cmd"].startswith("tipsv2 distill ")
    assert stages["export"]["cmd"].startswith("tipsv2 export ")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["synth"]["num_images"] <= 500  # the data half in about a minute
    assert set(params) == {"synth", "validate", "tokenizer", "train", "distill", "eval", "export"}
    assert params["distill"]["students"] == [STUDENT]


@pytest.mark.unit
def test_gitignore_ignores_outputs_not_the_pipeline():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    for path in ("data/synth", "data/tokenizer/tokenizer.model", ".dvc/config.local",
                 ".dvc/cache", ".dvc/tmp", ".tipsv2/dvc-remote"):  # fmt: skip
        assert ignored(path), path
    for path in ("dvc.yaml", "params.yaml", "dvc.lock", ".dvc/config", ".dvcignore"):
        assert not ignored(path), path


@pytest.fixture
def repo(tmp_path) -> Path:
    """A folder DVC would call a repository, with a tracked dir `d` (2 files, 10 bytes)."""
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("hello")
    (tmp_path / "d" / "b").write_text("world")
    return tmp_path


@pytest.mark.unit
def test_dataset_version_from_a_dvc_file(repo):
    (repo / "d.dvc").write_text(
        "outs:\n- md5: 0123abcd.dir\n  size: 10\n  nfiles: 2\n  hash: md5\n  path: d\n"
    )
    assert dataset_version(repo / "d") == "0123abcd.dir"
    (repo / "d" / "b").write_text("world, changed")
    with pytest.raises(VersioningError, match=r"\(2 files, 19 bytes\) differs from d.dvc"):
        dataset_version(repo / "d")
    assert dataset_version(repo / "d", check=False) == "0123abcd.dir"


@pytest.mark.unit
def test_dataset_version_from_the_lock(repo, monkeypatch):
    (repo / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  synth:\n    outs:\n    - path: d\n      hash: md5\n"
        "      md5: feed.dir\n      size: 10\n      nfiles: 2\n"
    )
    monkeypatch.chdir(repo)
    assert dataset_version("d") == "feed.dir"
    assert dataset_version(repo / "d", repo=repo) == "feed.dir"
    with pytest.raises(VersioningError, match="e: not tracked by DVC .*tracked outputs: d"):
        dataset_version("e")
    shutil.rmtree(repo / "d")
    with pytest.raises(VersioningError, match="missing; run `dvc pull`"):
        dataset_version("d")
    with pytest.raises(VersioningError, match="not inside a DVC repository"):
        dataset_version(repo.parent / "elsewhere", repo=repo.parent)


# ------------------------------------------------------------------------------ integration


@pytest.mark.integration
def test_push_and_pull_use_the_local_remote_under_tipsv2_home(tmp_path):
    """The committed `local` URL is right for ./.tipsv2 only: a push with another
    TIPSV2_HOME lands in that home's dvc-remote, and a clone pulls it back from there."""
    repo = tmp_path / "repo"
    for name in (".dvc/config", ".dvc/.gitignore", ".dvcignore"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, repo / name)
    (repo / "d").mkdir()
    (repo / "d" / "a").write_text("hello")
    home = tmp_path / "home"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TIPSV2_"))}
    env = dvc_environment(home, environ={**base, **GIT_IDENTITY, "TIPSV2_HOME": str(home)})
    git(repo, "init", "-q")
    run_dvc(["add", "d"], repo, env=env)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "d")

    tipsv2 = str(Path(sys.executable).with_name("tipsv2"))  # the CLI's entry point
    done = subprocess.run(
        [tipsv2, "data", "push", "--repo", str(repo)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "2 files pushed" in done.stdout  # the file and the directory's listing
    stored = [p for p in (home / "dvc-remote").rglob("*") if p.is_file()]
    assert len(stored) == 2
    assert not (repo / ".tipsv2").exists()  # the committed relative path stayed unused
    assert f"url = {home / 'dvc-remote'}" in (repo / ".dvc" / "config.local").read_text()

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    pull(clone, env=env)
    assert (clone / "d" / "a").read_text() == "hello"
    # Another home holds nothing: the pull looks there, not in the first home.
    other = dvc_environment(None, environ={**env, "TIPSV2_HOME": str(tmp_path / "other")})
    shutil.rmtree(clone / "d")
    shutil.rmtree(clone / ".dvc" / "cache")
    with pytest.raises(VersioningError, match="missing"):
        pull(clone, env=other)


@pytest.fixture(scope="module")
def env(s3_home) -> dict[str, str]:
    """DVC's environment: the stack's S3 variables, none of the caller's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "TIPSV2_"))}
    base.update(GIT_IDENTITY, TIPSV2_HOME=str(s3_home))
    return dvc_environment(s3_home, environ=base)


@pytest.fixture(scope="module")
def project(tmp_path_factory, env) -> Path:
    """A git repository holding a copy of this repository's DVC project (and the code its
    training stages depend on), after `dvc repro tokenizer`: the data half."""
    repo = tmp_path_factory.mktemp("dvcproject") / "repo"
    for name in PROJECT_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, repo / name)
    shutil.copytree(ROOT / CODE, repo / CODE, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pipeline")
    start = time.monotonic()
    run_dvc(["repro", "tokenizer"], repo, env=env, timeout=600)
    print(f"dvc repro tokenizer in {time.monotonic() - start:.1f} s")
    return repo


@pytest.mark.integration
@pytest.mark.slow
def test_repro_runs_synth_validate_tokenizer(project, env):
    stages = lock(project)["stages"]
    assert list(stages) == DATA_STAGES
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert stages["synth"]["params"]["params.yaml"]["synth"] == params["synth"]
    version = dataset_version(project / "data" / "synth")
    assert version == out_md5(project, "synth") and version.endswith(".dir")
    manifest = pq.read_table(project / "data" / "synth" / "manifest.parquet")
    assert manifest.num_rows == params["synth"]["num_images"]
    report = json.loads((project / "data" / "validation" / "validation.json").read_text())
    assert report["success"] is True
    assert report["config"]["min_samples"] == params["validate"]["min_samples"]
    info = json.loads((project / "data" / "tokenizer" / "tokenizer.json").read_text())
    manifest_sha = hashlib.sha256((project / "data/synth/manifest.parquet").read_bytes())
    assert info["dataset"]["manifest_sha256"] == manifest_sha.hexdigest()
    assert info["dataset"]["uri"] == "data/synth"
    assert info["requested_vocab_size"] == params["tokenizer"]["vocab_size"]
    # Nothing changed: a second repro runs no stage and leaves the lock as it was.
    before = (project / "dvc.lock").read_text()
    again = run_dvc(["repro", "tokenizer"], project, env=env).stdout
    assert "Running stage" not in again
    assert (project / "dvc.lock").read_text() == before
    assert "up to date" in run_dvc(["status", "tokenizer"], project, env=env).stdout


@pytest.mark.integration
@pytest.mark.slow
def test_push_to_the_stack_and_pull_into_an_empty_clone(project, env, s3_home, tmp_path):
    creds = read_env_file(s3_home / "stack" / "stack.env")
    remote = configure_remote(project, "s3", env=env)
    assert remote == Remote(S3_REMOTE, "s3://tipsv2/dvc")
    local_config = (project / ".dvc" / "config.local").read_text()
    assert "remote = s3" in local_config and creds["AWS_ENDPOINT_URL"] in local_config
    for secret in (creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in local_config
        assert secret not in (project / ".dvc" / "config").read_text()
    assert "pushed" in push(project, env=env)  # the default remote, now s3
    objects = Storage(environ=env).list_files("s3://tipsv2/dvc")
    md5 = out_md5(project, "synth")
    assert f"files/md5/{md5[:2]}/{md5[2:]}" in objects
    # The local remote works too: under the environment's $TIPSV2_HOME, not the
    # committed path below the project.
    push(project, LOCAL_REMOTE, env=env)
    assert (Path(env["TIPSV2_HOME"]) / "dvc-remote" / "files" / "md5").is_dir()
    assert not (project / ".tipsv2").exists()

    git(project, "add", "dvc.lock")
    git(project, "commit", "-q", "-m", "lock")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    assert not (clone / "data").exists() and not (clone / ".dvc" / "cache").exists()
    configure_remote(clone, "s3", env=env)
    start = time.monotonic()
    pulled = pull(clone, targets=["tokenizer"], env=env)  # the data half ran
    print(f"dvc pull in {time.monotonic() - start:.1f} s: {pulled.strip().splitlines()[-1]}")
    assert tree_digests(clone / "data") == tree_digests(project / "data")
    for stage in ("synth", "tokenizer"):
        name = "data/" + stage
        assert dataset_version(clone / name) == dataset_version(project / name)
    assert "up to date" in run_dvc(["status", "tokenizer"], clone, env=env).stdout


@pytest.mark.integration
@pytest.mark.slow
def test_failed_gate_stops_the_pipeline(project, env, tmp_path):
    clone = tmp_path / "gate"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["validate"]["min_samples"] = 100_000
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(VersioningError) as e:
        run_dvc(["repro"], clone, env=env)
    message = str(e.value)
    assert "validation FAILED" in message
    assert "expect_table_row_count_to_be_between(min_value=100000)" in message
    assert "Running stage 'tokenizer'" not in message
    assert not (clone / "data" / "tokenizer").exists()
    assert not (clone / "data" / "models").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_exp_run_with_a_parameter_changes_the_dataset_hash(project, env):
    before = dataset_version(project / "data" / "synth")
    tok_before = out_md5(project, "tokenizer")
    start = time.monotonic()
    sweep = ["exp", "run", "tokenizer", "-S", "synth.num_images=120"]
    run_dvc(sweep, project, env=env, timeout=600)
    print(f"dvc exp run in {time.monotonic() - start:.1f} s")
    after = dataset_version(project / "data" / "synth")
    assert after != before and out_md5(project, "tokenizer") != tok_before
    assert yaml.safe_load((project / "params.yaml").read_text())["synth"]["num_images"] == 120
    assert pq.read_table(project / "data" / "synth" / "manifest.parquet").num_rows == 120


@pytest.mark.integration
@pytest.mark.slow
def test_curate_into_the_gateway_validate_push_and_pull(
    project, env, s3_home, tmp_path, monkeypatch
):
    """The issue's whole data path: mixed sources curated into S3, the gate on the S3
    copy, the dataset versioned with DVC, pushed, and pulled into an empty clone."""
    from components.curate import curate
    from components.validate import ValidationConfig, validate
    from tests.test_curation import build_mixed_sources

    creds = read_env_file(s3_home / "stack" / "stack.env")
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    _, uris, _, accepted = build_mixed_sources(tmp_path / "raw")
    out = "s3://tipsv2/curated/e2e"
    result = curate(uris, out, workers=0, progress=False)
    assert result.num_samples == accepted
    # The planted bad records make a high reject rate: that threshold is the user's call.
    gate = validate(out, ValidationConfig(max_reject_rate=0.9, max_duplicate_rate=0.9))
    assert gate.success, [c.name for c in gate.failures]
    store = Storage(environ=env)
    assert "validation/validation.json" in store.list_files(out)

    # Tracked with `dvc add` outside data/ (the stages' git-ignored outputs).
    store.get_directory(out, project / "curated")
    run_dvc(["add", "curated"], project, env=env)
    version = dataset_version(project / "curated")
    configure_remote(project, "s3", env=env)
    push(project, env=env)
    git(project, "add", "curated.dvc", ".gitignore")
    git(project, "commit", "-q", "-m", "curated")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    configure_remote(clone, "s3", env=env)
    run_dvc(["pull", "curated.dvc"], clone, env=env)  # the stages' outputs are not the point
    assert tree_digests(clone / "curated") == tree_digests(project / "curated")
    assert dataset_version(clone / "curated") == version


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.long
def test_whole_pipeline_as_an_experiment_compared_by_exp_show(project, env, tmp_path):
    """train -> distill -> eval -> export through `dvc exp run` at smoke size: the models
    carry the DVC data version, the metrics reach `dvc exp show`, nothing re-runs when
    nothing changed, and a change to the training code invalidates the training stages."""
    clone = tmp_path / "whole"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    start = time.monotonic()
    run_dvc(["exp", "run", *[a for s in SMOKE for a in ("-S", s)]], clone, env=env, timeout=900)
    print(f"dvc exp run of the whole pipeline in {time.monotonic() - start:.1f} s")

    stages = lock(clone)["stages"]
    assert list(stages) == ALL_STAGES
    assert stages["train"]["params"]["params.yaml"]["train"]["steps"] == 4
    assert CODE in [d["path"] for d in stages["train"]["deps"]]
    data_version = out_md5(clone, "synth")
    for model in ("teacher", f"student-{STUDENT}"):
        meta = json.loads((clone / "data/models" / model / "final/meta.json").read_text())
        assert meta["data_version"] == data_version, model
    student = clone / f"data/models/student-{STUDENT}/final/meta.json"
    student_meta = json.loads(student.read_text())
    assert student_meta["variant"] == STUDENT
    export = json.loads((clone / "data/export/export_meta.json").read_text())
    assert (clone / "data/export/COMPLETE").is_file() and export["parity"]["passed"] is True
    assert export["source_meta"]["data_version"] == data_version
    assert (clone / "data/reports/teacher/report.html").is_file()

    # The evaluations are DVC metrics, and the experiment shows them beside its params.
    key = "eval/retrieval/synth-val/i2t_r@1"
    metrics = json.loads(run_dvc(["metrics", "show", "--json"], clone, env=env).stdout)
    shown = metrics[next(iter(metrics))]["data"]
    for model in ("teacher", f"student-{STUDENT}"):
        assert 0.0 <= shown[f"data/eval/{model}.json"]["data"][key] <= 1.0
    # The training curves are DVC plots, read from each run's curves.csv.
    plots = json.loads(run_dvc(["plots", "show", "--json"], clone, env=env).stdout)
    assert not plots.get("errors"), plots["errors"]
    for name in ("teacher-loss", "student-loss"):
        values = plots["data"][name][0]["content"]["data"]["values"]
        # (DVC names the plotted column in "field" only when a plot has several.)
        assert values and all(v.get("field", "train/loss").startswith("train/") for v in values)
        assert all(float(v["train/loss"]) > 0 for v in values), name
    table = json.loads(run_dvc(["exp", "show", "--json"], clone, env=env).stdout)
    runs = [e for row in table for e in (row.get("experiments") or [])]
    assert runs, "no experiment in `dvc exp show`"
    exp = runs[0]["revs"][0]["data"]
    assert exp["params"]["params.yaml"]["data"]["distill"]["steps"] == 4
    assert key in exp["metrics"]["data/eval/teacher.json"]["data"]

    # Nothing changed: nothing runs. A change to the code retrains (the code version).
    assert "Running stage" not in run_dvc(["repro"], clone, env=env).stdout
    with open(clone / CODE / "__init__.py", "a") as f:
        f.write("\n# a change of the code\n")
    status = run_dvc(["status", "train"], clone, env=env).stdout
    assert status.startswith("train:") and re.search(rf"modified:\s+{CODE}\n", status), status
