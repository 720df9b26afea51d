"""Model registry and promotion gate: a real nano14 export registered in MLflow.

Most tests run against the REAL MLflow tracking server of the local stack (started once
for the module, with the S3 gateway holding the artifacts); one runs the whole path
against the embedded SQLite store. Each gate scenario uses its own registered model so
the scenarios do not depend on each other's champion.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from components import stack
from components.promote import (
    HISTORY_EXPERIMENT,
    TAG_ACTOR,
    TAG_COMPARED_TO,
    TAG_DECISION,
    TAG_HISTORY_RUN,
    TAG_REASON,
    TAG_REASONS,
    TAG_SUPERSEDED_BY,
    TAG_TIMESTAMP,
    GateConfig,
    MetricRule,
    PromotionError,
    evaluate_gate,
    history,
    promote,
    rollback,
)
from components.registry import (
    CHALLENGER,
    CHAMPION,
    PARITY_METRIC,
    RegistryError,
    VersionInfo,
    alias_version,
    fluent_uris,
    load_metrics_file,
    parse_model_uri,
    register_export,
    resolve_model_uri,
    version_info,
)
from components.settings import read_env_file
from components.tracking import client_for, sanitize_key
from pipelines.cli import main as cli_main
from tests.conftest import logged_in
from tipsv2_core.export import export_checkpoint
from tipsv2_core.inference import embed_images, load_image
from tipsv2_core.models.io import save_model
from tipsv2_core.models.tips import l2_normalize

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's SQLite store trips SQLAlchemy 2.1's `noload` deprecation (not ours to fix).
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")

TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))
SIZE = 112
MIOU = "eval/zeroshot_seg/synth/miou"
R1 = "eval/retrieval/synth/i2t_r@1"  # `@` is not a valid MLflow key: stored as `:`
R1_KEY = "eval/retrieval/synth/i2t_r:1"
R1_LEGACY_KEY = "eval/retrieval/synth/i2t_r_at_1"  # how versions registered before spell it
CONFIG = GateConfig(primary_metric=MIOU, secondary=(MetricRule(R1, margin=0.05),))
TOL = 1e-4


# ---------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def exported(tmp_path_factory, nano) -> tuple[Path, Path]:
    """(native checkpoint, its ONNX export) of the randomised nano model; parity at 112."""
    d = tmp_path_factory.mktemp("registry_export")
    meta = {"data_version": "md5:train-v1", "git_sha": "a" * 40, "step": 7}
    ckpt = save_model(nano, d / "native", meta=meta)
    t0 = time.monotonic()
    export_checkpoint(ckpt, d / "onnx", image_sizes=(SIZE,), batches=(1, 2))
    print(f"export in {time.monotonic() - t0:.1f} s")
    return ckpt, d / "onnx"


@pytest.fixture(scope="module")
def parity_failed(exported, tmp_path_factory) -> Path:
    """A copy of the export whose record says its parity check failed (as an export made
    with a loose --tolerance, or edited afterwards, would)."""
    d = tmp_path_factory.mktemp("parity_failed") / "onnx"
    shutil.copytree(exported[1], d)
    meta = json.loads((d / "export_meta.json").read_text())
    meta["parity"]["passed"] = False
    meta["parity"]["max_abs_diff"] = 0.02
    meta["metrics"][PARITY_METRIC] = 0.02
    (d / "export_meta.json").write_text(json.dumps(meta))
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """The tracking URI of a running local stack (MLflow server + S3 gateway)."""
    home = tmp_path_factory.mktemp("registry_stack")
    t0 = time.monotonic()
    stack.up(home)
    print(f"stack up in {time.monotonic() - t0:.1f} s")
    try:
        # Its MLflow server wants the generated credentials: in the environment, as for a
        # shell that sourced stack.env (the CLI subprocesses below inherit them).
        with logged_in(home):
            yield read_env_file(home / "stack" / "stack.env")["MLFLOW_TRACKING_URI"]
    finally:
        stack.down(home)


@pytest.fixture
def sqlite_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    from PIL import Image

    d = tmp_path_factory.mktemp("registry_images")
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(90, 130), (112, 112), (200, 150)]):
        p = d / f"img{i}.png"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    return paths


_counter = iter(range(10**6))


def model_name(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}-{os.getpid()}"


def reg(
    uri: str,
    export: Path,
    name: str,
    miou: float,
    r1: float = 0.5,
    eval_version: str = "md5:eval-v1",
) -> str:
    """Registers `export` with the given metrics; returns the new version."""
    result = register_export(
        export,
        name,
        {MIOU: miou, R1: r1},
        eval_data_version=eval_version,
        pipeline_run_id="pipe-42",
        checkpoint_uri="s3://tipsv2/checkpoints/nano/final",
        tracking_uri=uri,
    )
    return result.version


def cli(*argv: str) -> tuple[int, str, str]:
    """`tipsv2 …` in this process (the real parser and handlers); (rc, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def assert_recorded(
    uri: str, name: str, version: str, decision: str, compared_to: str | None, n_history: int
) -> dict:
    """The version's promotion tags and the newest history entry agree with `decision`."""
    tags = version_info(client_for(uri), name, version).tags
    assert tags[TAG_DECISION] == decision
    assert tags[TAG_COMPARED_TO] == (compared_to or "none")
    assert json.loads(tags[TAG_REASONS]), "a decision always says why"
    assert tags[TAG_TIMESTAMP].endswith("Z") and tags[TAG_ACTOR]
    events = history(name, tracking_uri=uri)
    assert len(events) == n_history
    newest = events[0]
    assert (newest["version"], newest["decision"]) == (version, decision)
    assert newest["compared_to"] == compared_to
    assert newest["reasons"] == json.loads(tags[TAG_REASONS])
    assert newest["history_run_id"] == tags[TAG_HISTORY_RUN]
    return newest


# ---------------------------------------------------------------------------------------
# the gate as a pure function (no MLflow)


def info(version: str, metrics: dict[str, float], **kw) -> VersionInfo:
    defaults = dict(
        name="m",
        version=version,
        aliases=(),
        metrics={sanitize_key(k): v for k, v in metrics.items()} | {PARITY_METRIC: 3e-6},
        tags={},
        eval_data_version="ev1",
        parity_passed=True,
        max_abs_diff=3e-6,
        run_id=None,
        model_id=None,
        source="models:/m-x",
    )
    return VersionInfo(**(defaults | kw))


@pytest.mark.unit
def test_gate_rules_one_by_one():
    champ = info("1", {MIOU: 0.30, R1: 0.50})
    verdict = evaluate_gate(info("2", {MIOU: 0.31, R1: 0.47}), champ, CONFIG)
    assert verdict.passed, verdict.reasons()  # better, and within the R@1 margin
    worse = evaluate_gate(info("2", {MIOU: 0.29, R1: 0.50}), champ, CONFIG)
    assert [r.rule for r in worse.failures] == ["primary"]
    assert "worse by 0.01" in worse.reasons()[0]
    regress = evaluate_gate(info("2", {MIOU: 0.35, R1: 0.44}), champ, CONFIG)
    assert [(r.rule, r.metric) for r in regress.failures] == [("secondary", R1)]
    assert regress.failures[0].message.startswith(f"{R1}: challenger 0.44")
    other_data = evaluate_gate(
        info("2", {MIOU: 0.35, R1: 0.5}, eval_data_version="ev2"), champ, CONFIG
    )
    assert [r.rule for r in other_data.failures] == ["eval_data_version"]
    unknown = evaluate_gate(info("2", {MIOU: 0.35, R1: 0.5}, eval_data_version=None), champ, CONFIG)
    assert [r.rule for r in unknown.failures] == ["eval_data_version"]
    flag = evaluate_gate(info("2", {MIOU: 0.35, R1: 0.5}, parity_passed=False), champ, CONFIG)
    assert [r.rule for r in flag.failures] == ["parity"]
    loose = evaluate_gate(info("2", {MIOU: 0.35, R1: 0.5}, max_abs_diff=2e-3), champ, CONFIG)
    assert [r.rule for r in loose.failures] == ["parity"]
    missing = evaluate_gate(info("2", {R1: 0.5}), champ, CONFIG)
    assert [r.rule for r in missing.failures] == ["primary"]
    # No champion: only parity and the presence of the primary metric count.
    first = evaluate_gate(info("1", {MIOU: 0.01}, eval_data_version=None), None, CONFIG)
    assert first.passed and "first model" in first.reasons()[-1]
    # Lower-is-better metrics flip the comparison; min_improvement demands a real gain.
    loss = GateConfig(primary_metric="eval/x/y/loss", higher_is_better=False)
    champ_loss = info("1", {"eval/x/y/loss": 1.0})
    assert evaluate_gate(info("2", {"eval/x/y/loss": 0.9}), champ_loss, loss).passed
    assert not evaluate_gate(info("2", {"eval/x/y/loss": 1.1}), champ_loss, loss).passed
    strict = GateConfig(primary_metric=MIOU, min_improvement=0.02)
    assert not evaluate_gate(info("2", {MIOU: 0.31}), champ, strict).passed


@pytest.mark.unit
def test_gate_finds_a_metric_under_either_spelling_of_at():
    # A champion registered when `@` was spelt `_at_`; a challenger with today's `:`.
    champ = info("1", {MIOU: 0.30})
    champ = replace(champ, metrics=champ.metrics | {R1_LEGACY_KEY: 0.50})
    challenger = info("2", {MIOU: 0.31, R1: 0.40})
    assert R1_KEY in challenger.metrics and R1_LEGACY_KEY in champ.metrics
    for spelt in (R1, R1_KEY, R1_LEGACY_KEY):  # a rule may name it any of these ways
        config = GateConfig(primary_metric=MIOU, secondary=(MetricRule(spelt, margin=0.05),))
        verdict = evaluate_gate(challenger, champ, config)
        (rule,) = [r for r in verdict.rules if r.rule == "secondary"]
        assert (rule.metric, rule.challenger, rule.champion) == (R1, 0.40, 0.50), spelt
        assert not rule.passed and "regresses by 0.1" in rule.message


@pytest.mark.unit
def test_gate_config_files_and_validation(tmp_path):
    yaml_file = tmp_path / "gate.yaml"
    yaml_file.write_text(
        f"primary_metric: {MIOU}\n"
        "min_improvement: 0.001\n"
        "secondary:\n"
        f"  {R1}: {{margin: 0.05}}\n"
        "  eval/knn/synth/top1: 0.01\n"
        "  eval/x/y/loss: {margin: 0.1, higher_is_better: false}\n"
        "parity_tolerance: 1.0e-5\n"
    )
    cfg = GateConfig.from_file(yaml_file)
    assert cfg.primary_metric == MIOU and cfg.min_improvement == 0.001
    assert cfg.parity_tolerance == 1e-5
    assert cfg.secondary == (
        MetricRule(R1, 0.05),
        MetricRule("eval/knn/synth/top1", 0.01),
        MetricRule("eval/x/y/loss", 0.1, higher_is_better=False),
    )
    json_file = tmp_path / "gate.json"
    json_file.write_text(json.dumps(cfg.to_dict()))
    assert GateConfig.from_file(json_file) == cfg
    with pytest.raises(PromotionError, match="unknown gate config key"):
        GateConfig.from_dict({"primary_metric": MIOU, "primary_metirc": MIOU})
    with pytest.raises(PromotionError, match="margin must be >= 0"):
        GateConfig.from_dict({"primary_metric": MIOU, "secondary": {R1: -0.1}})


@pytest.mark.unit
def test_model_uris_and_metrics_files(tmp_path):
    assert parse_model_uri("models:/nano@champion").alias == "champion"
    ref = parse_model_uri("models:/team.nano/12")
    assert (ref.name, ref.version) == ("team.nano", "12")
    assert parse_model_uri("models:/m-0123abc").model_id == "m-0123abc"
    for bad in ("models:/nano", "models:/@x", "runs:/abc/model"):
        with pytest.raises(RegistryError):
            parse_model_uri(bad)
    flat = tmp_path / "eval.json"
    flat.write_text(json.dumps({MIOU: 0.3, R1: 0.5}))
    assert load_metrics_file(flat) == ({MIOU: 0.3, R1: 0.5}, {})
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"metrics": {MIOU: 0.3}, "eval_data_version": "ev9"}))
    assert load_metrics_file(nested) == ({MIOU: 0.3}, {"eval_data_version": "ev9"})
    flat.write_text(json.dumps({MIOU: "high"}))
    with pytest.raises(RegistryError, match="not a number"):
        load_metrics_file(flat)


# ---------------------------------------------------------------------------------------
# against the stack's MLflow server


@pytest.mark.integration
@pytest.mark.slow
def test_register_logs_onnx_model_export_metrics_and_lineage(server, exported):
    from mlflow.models import Model

    ckpt, export = exported
    name = model_name("nano-reg")
    result = register_export(
        export,
        name,
        {MIOU: 0.3, R1: 0.5},
        eval_data_version="md5:eval-v1",
        pipeline_run_id="pipe-42",
        tracking_uri=server,
    )
    assert result.version == "1" and result.aliases == (CHALLENGER,)
    client = client_for(server)
    assert alias_version(client, name, CHALLENGER) == "1"
    assert alias_version(client, name, CHAMPION) is None  # registering never promotes

    v = version_info(client, name, "1")
    assert v.metrics[sanitize_key(MIOU)] == 0.3 and v.metrics[R1_KEY] == 0.5
    assert float(v.tags[R1_KEY]) == 0.5  # the version tag: readable, `@` spelt `:`
    assert v.parity_passed is True and 0 < v.max_abs_diff <= TOL
    assert v.eval_data_version == "md5:eval-v1"
    # Lineage: what the checkpoint recorded, found through the export.
    assert v.tags["data_version"] == "md5:train-v1"
    assert v.tags["git_sha"] == "a" * 40
    assert v.tags["pipeline_run_id"] == "pipe-42"
    assert v.tags["checkpoint_uri"] == str(ckpt.resolve())
    assert v.tags["variant"] == "nano14"

    run = client.get_run(result.run_id)
    for key in ("git_sha", "data_version", "pipeline_run_id", "eval_data_version"):
        assert run.data.tags[key] == v.tags[key]
    assert run.data.metrics[sanitize_key(MIOU)] == 0.3
    # A step of pipeline run pipe-42: a child of that pipeline's parent run.
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["pipeline_run_id"] == "pipe-42"
    assert parent.data.tags["tipsv2_kind"] == "pipeline"
    assert run.data.metrics[PARITY_METRIC] == pytest.approx(v.max_abs_diff)

    # The logged model: ONNX flavour with a dynamic signature and an input example, and
    # the whole export beside it.
    files = {f.path for f in client.list_logged_model_artifacts(result.model_id)}
    assert {"MLmodel", "model.onnx", "export"} <= files
    exported_files = {
        f.path.split("/")[-1] for f in client.list_logged_model_artifacts(result.model_id, "export")
    }
    assert {"image_encoder.onnx", "image_values.onnx", "text_encoder.onnx"} <= exported_files
    assert {"export_meta.json", "COMPLETE"} <= exported_files
    with fluent_uris(server):
        mlmodel = Model.load(f"models:/{name}/1")
    assert "onnx" in mlmodel.flavors and mlmodel.saved_input_example_info is not None
    (images,) = mlmodel.signature.inputs.inputs
    assert (images.name, images.type, images.shape) == (
        "images",
        np.dtype("float32"),
        (-1, 3, -1, -1),
    )
    assert [o["name"] for o in mlmodel.signature.outputs.to_dict()] == [
        "cls1",
        "cls2",
        "patch_tokens",
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_first_model_is_promoted_then_better_promoted_and_worse_refused(server, exported):
    export = exported[1]
    name = model_name("nano-gate")
    v1 = reg(server, export, name, miou=0.30)
    d = promote(name, v1, CONFIG, tracking_uri=server)
    assert d.action == "promoted" and d.champion_before is None and d.champion_after == v1
    assert any("first model" in r for r in d.reasons)
    assert alias_version(client_for(server), name, CHAMPION) == v1
    assert_recorded(server, name, v1, "promoted", None, n_history=1)

    v2 = reg(server, export, name, miou=0.35, r1=0.48)  # better; R@1 within the margin
    d = promote(name, v2, CONFIG, tracking_uri=server)
    assert d.action == "promoted" and (d.champion_before, d.champion_after) == (v1, v2)
    assert alias_version(client_for(server), name, CHAMPION) == v2
    assert_recorded(server, name, v2, "promoted", v1, n_history=2)
    # The replaced champion says by whom.
    assert (
        version_info(client_for(server), name, v1)
        .tags[TAG_SUPERSEDED_BY]
        .startswith(f"v{v2} promoted")
    )

    v3 = reg(server, export, name, miou=0.33)  # worse on the primary metric
    d = promote(name, v3, CONFIG, tracking_uri=server)
    assert d.action == "refused" and not d.moved and d.champion_after == v2
    assert alias_version(client_for(server), name, CHAMPION) == v2
    entry = assert_recorded(server, name, v3, "refused", v2, n_history=3)
    assert any(f"{MIOU}: challenger 0.33 vs champion 0.35: worse" in r for r in entry["reasons"])
    # The full record, with every rule and the config, is an artifact of the history run.
    client = client_for(server)
    path = client.download_artifacts(d.history_run_id, "decision.json")
    record = json.loads(Path(path).read_text())
    assert record["action"] == "refused" and record["config"]["primary_metric"] == MIOU
    assert {r["rule"] for r in record["rules"]} >= {"parity", "eval_data_version", "primary"}
    hist = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    runs = client.search_runs(
        [hist.experiment_id], filter_string=f"tags.registered_model = '{name}'"
    )
    assert sorted(r.data.tags["decision"] for r in runs) == ["promoted", "promoted", "refused"]


@pytest.mark.integration
@pytest.mark.slow
def test_secondary_regression_other_eval_data_and_failed_parity_are_refused(
    server, exported, parity_failed
):
    export = exported[1]
    name = model_name("nano-refuse")
    v1 = reg(server, export, name, miou=0.30, r1=0.50)
    assert promote(name, v1, CONFIG, tracking_uri=server).action == "promoted"
    n = 1

    cases = {
        # better primary, but R@1 drops by 0.1 > margin 0.05
        "secondary": reg(server, export, name, miou=0.40, r1=0.40),
        # better everywhere, measured on another eval dataset version
        "eval_data_version": reg(server, export, name, miou=0.40, eval_version="md5:eval-v2"),
        # better everywhere, but the export's parity check failed
        "parity": reg(server, parity_failed, name, miou=0.40),
    }
    for rule, version in cases.items():
        d = promote(name, version, CONFIG, tracking_uri=server)
        n += 1
        assert d.action == "refused", (rule, d.reasons)
        assert [r.rule for r in d.rules if not r.passed] == [rule], d.reasons
        assert alias_version(client_for(server), name, CHAMPION) == v1
        assert_recorded(server, name, version, "refused", v1, n_history=n)
    assert version_info(client_for(server), name, cases["parity"]).parity_passed is False

    # A real export whose max_abs_diff is above the configured tolerance: refused; the
    # same version under the default tolerance passes, so that rule alone decided.
    v = reg(server, export, name, miou=0.40)
    tight = GateConfig(primary_metric=MIOU, parity_tolerance=1e-9)
    d = promote(name, v, tight, tracking_uri=server)
    assert d.action == "refused" and "exceeds the tolerance 1e-09" in d.reasons[0]
    d = promote(name, v, CONFIG, tracking_uri=server)
    assert d.action == "promoted"
    assert_recorded(server, name, v, "promoted", v1, n_history=n + 2)


@pytest.mark.integration
@pytest.mark.slow
def test_cli_force_rollback_show_and_list(server, exported, tmp_path):
    export = exported[1]
    name = model_name("nano-cli")
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"metrics": {MIOU: 0.3, R1: 0.5}, "eval_data_version": "e1"}))
    rc, out, err = cli(
        "models", "register", "--export", str(export), "--name", name,
        "--metrics", str(metrics), "--tracking-uri", server, "--json",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["version"] == "1"
    # No --config: the primary metric is the only zero-shot mIoU the version has.
    rc, out, err = cli("promote", name, "--version", "1", "--tracking-uri", server)
    assert rc == 0 and "PROMOTED" in out, err

    metrics.write_text(json.dumps({"metrics": {MIOU: 0.2, R1: 0.5}, "eval_data_version": "e1"}))
    cli(
        "models", "register", "--export", str(export), "--name", name,
        "--metrics", str(metrics), "--tracking-uri", server,
    )  # fmt: skip
    rc, out, err = cli(
        "promote", name, "--version", "2", "--margin", f"{R1}=0.01", "--tracking-uri", server
    )
    assert rc == 1 and "REFUSED" in err and "worse by 0.1" in err
    rc, _, err = cli("promote", name, "--version", "2", "--force", "--tracking-uri", server)
    assert rc == 2 and "--force needs --reason" in err

    rc, out, err = cli(
        "promote", name, "--version", "2", "--force", "--reason", "hotfix for INC-7",
        "--actor", "alice", "--tracking-uri", server, "--json",
    )  # fmt: skip
    assert rc == 0, err
    forced = json.loads(out)
    assert forced["action"] == "forced" and forced["champion_after"] == "2"
    assert forced["reasons"][0] == "forced by alice: hotfix for INC-7"
    assert any(r.startswith("overridden: ") for r in forced["reasons"])
    entry = assert_recorded(server, name, "2", "forced", "1", n_history=3)
    assert entry["actor"] == "alice" and entry["reason"] == "hotfix for INC-7"
    assert version_info(client_for(server), name, "2").tags[TAG_REASON] == "hotfix for INC-7"

    rc, out, err = cli(
        "rollback", name, "--to-version", "1", "--reason", "latency regression",
        "--tracking-uri", server,
    )  # fmt: skip
    assert rc == 0 and "ROLLBACK" in out, err
    assert alias_version(client_for(server), name, CHAMPION) == "1"
    entry = assert_recorded(server, name, "1", "rollback", "2", n_history=4)
    assert (entry["champion_before"], entry["champion_after"]) == ("2", "1")
    assert "latency regression" in entry["reasons"][0]
    with pytest.raises(PromotionError, match="already the champion"):
        rollback(name, "1", tracking_uri=server)

    rc, out, _ = cli("models", "show", name, "--tracking-uri", server, "--json")
    assert rc == 0
    shown = json.loads(out)
    by_version = {v["version"]: v for v in shown["versions"]}
    assert by_version["1"]["aliases"] == [CHAMPION]
    assert by_version["2"]["aliases"] == [CHALLENGER]
    assert by_version["2"]["tags"][TAG_DECISION] == "forced"
    assert [e["decision"] for e in shown["history"]] == [
        "rollback",
        "forced",
        "refused",
        "promoted",
    ]
    rc, out, _ = cli("models", "show", name, "--tracking-uri", server)
    assert "promotion history" in out and "hotfix for INC-7" in out
    rc, out, _ = cli("models", "list", "--tracking-uri", server, "--json")
    listed = {m["name"]: m for m in json.loads(out)}
    assert listed[name]["aliases"] == {CHALLENGER: "2", CHAMPION: "1"}
    rc, out, _ = cli("models", "list", "--tracking-uri", server)
    assert name in out and "champion=v1" in out
    rc, _, err = cli("models", "show", "no-such-model", "--tracking-uri", server)
    assert rc == 2 and "no registered model" in err


def native_embeddings(nano, files: list[str]) -> dict[str, np.ndarray]:
    return embed_images(nano.vision, files, SIZE, batch_size=8)


@pytest.mark.integration
@pytest.mark.slow
def test_champion_loads_by_alias_with_pyfunc_and_tipsv2_embed(
    server, exported, nano, image_files, tmp_path
):
    import mlflow

    name = model_name("nano-serve")
    version = reg(server, exported[1], name, miou=0.3)
    promote(name, version, CONFIG, tracking_uri=server)
    want = native_embeddings(nano, image_files)

    # MLflow's own loader: no project code needed, raw encoder outputs.
    with fluent_uris(server):
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    batch = torch.stack([load_image(p, SIZE) for p in image_files]).numpy()
    out = model.predict(batch)
    assert out["patch_tokens"].shape == (3, SIZE // 14, SIZE // 14, 96)
    for key in ("cls1", "cls2"):
        got = l2_normalize(torch.from_numpy(out[key])).numpy()
        assert np.abs(got - want[key]).max() <= TOL, key

    # Our CLI: the export is fetched into $TIPSV2_HOME/cache and run with ONNX Runtime.
    home = tmp_path / "home"
    env = os.environ | {
        "TIPSV2_HOME": str(home),
        "MLFLOW_TRACKING_URI": server,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    result = tmp_path / "emb.npz"
    res = subprocess.run(
        [
            TIPSV2, "embed", "image", "--checkpoint", f"models:/{name}@champion",
            "--image-size", str(SIZE), *image_files, "--output", str(result),
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = np.load(result)
    for key in ("cls1", "cls2"):
        assert np.abs(got[key] - want[key]).max() <= TOL, key
    cached = list((home / "cache" / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "COMPLETE").is_file()
    assert cached[0].name == version_info(client_for(server), name, version).model_id
    # A second resolve is served from the cache, by version URI too.
    t0 = time.monotonic()
    again = resolve_model_uri(
        f"models:/{name}/{version}", tracking_uri=server, cache_dir=cached[0].parent
    )
    assert again == cached[0] and time.monotonic() - t0 < 5
    with pytest.raises(RegistryError, match="not found"):
        resolve_model_uri(f"models:/{name}@nope", tracking_uri=server, cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------
# against the embedded SQLite store


@pytest.mark.integration
@pytest.mark.slow
def test_sqlite_register_promote_and_load_by_alias(
    sqlite_uri, exported, nano, image_files, tmp_path, monkeypatch
):
    import mlflow

    export = exported[1]
    name = "nano-sqlite"
    v1 = reg(sqlite_uri, export, name, miou=0.3)
    v2 = reg(sqlite_uri, export, name, miou=0.2)
    assert promote(name, v1, CONFIG, tracking_uri=sqlite_uri).action == "promoted"
    assert promote(name, v2, CONFIG, tracking_uri=sqlite_uri).action == "refused"
    assert_recorded(sqlite_uri, name, v2, "refused", v1, n_history=2)
    # Artifacts live beside the database, not in the working directory's ./mlruns.
    assert (tmp_path / "mlartifacts").is_dir()
    assert not Path("mlruns").exists()

    want = native_embeddings(nano, image_files)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    with fluent_uris(sqlite_uri):
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # the caller's setting is back
    batch = torch.stack([load_image(p, SIZE) for p in image_files]).numpy()
    got = l2_normalize(torch.from_numpy(model.predict(batch)["cls1"])).numpy()
    assert np.abs(got - want["cls1"]).max() <= TOL

    # `tipsv2 embed` in this process, finding the store as a user's shell would.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.setenv("TIPSV2_HOME", str(tmp_path / "home"))
    out = tmp_path / "emb.npz"
    rc, _, err = cli(
        "embed", "image", "--checkpoint", f"models:/{name}@champion",
        "--image-size", str(SIZE), *image_files, "--output", str(out),
    )  # fmt: skip
    assert rc == 0, err
    for key in ("cls1", "cls2"):
        assert np.abs(np.load(out)[key] - want[key]).max() <= TOL
    assert len(list((tmp_path / "home" / "cache" / "models").iterdir())) == 1


# ---------------------------------------------------------------------------------------
# rollback only goes back (embedded SQLite store: versions created directly in MLflow)


def _versions(uri: str, name: str, n: int, tmp_path: Path) -> None:
    client = client_for(uri)
    client.create_registered_model(name)
    for i in range(n):
        src = tmp_path / f"v{i + 1}"
        src.mkdir()
        client.create_model_version(name, str(src))


@pytest.mark.integration
def test_rollback_only_returns_to_an_earlier_champion(sqlite_uri, tmp_path):
    name = model_name("rollback")
    _versions(sqlite_uri, name, 3, tmp_path)
    for v in ("1", "2"):  # v1, then v2 champion; v3 never was (as if the gate refused it)
        promote(name, v, force=True, reason="setup", tracking_uri=sqlite_uri)

    with pytest.raises(PromotionError, match=r"v3 was never the champion; v3 is newer"):
        rollback(name, "3", tracking_uri=sqlite_uri)
    rc, _, err = cli("rollback", name, "--to-version", "3", "--tracking-uri", sqlite_uri)
    assert rc == 2 and "never the champion" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert alias_version(client_for(sqlite_uri), name, CHAMPION) == "2"

    d = rollback(name, "1", reason="regression", tracking_uri=sqlite_uri)
    assert d.champion_after == "1" and d.reasons[0].startswith("rolled back from v2")
    # v2 was champion, but going to it now is forward: that is what `promote` is for.
    with pytest.raises(PromotionError, match=r"v2 is newer than the champion v1"):
        rollback(name, "2", tracking_uri=sqlite_uri)

    rc, _, err = cli("rollback", name, "--to-version", "3", "--force", "--tracking-uri", sqlite_uri)
    assert rc == 2 and "--force needs --reason" in err
    rc, out, err = cli(
        "rollback", name, "--to-version", "3", "--force", "--reason", "INC-9 hotfix",
        "--actor", "bob", "--tracking-uri", sqlite_uri, "--json",
    )  # fmt: skip
    assert rc == 0, err
    forced = json.loads(out)
    assert forced["champion_after"] == "3"
    assert forced["reasons"][0] == "forced rollback from v1 by bob: INC-9 hotfix"
    assert any("overridden: v3 was never the champion" in r for r in forced["reasons"])
    newest = history(name, tracking_uri=sqlite_uri)[0]
    assert newest["decision"] == "rollback" and newest["reason"] == "INC-9 hotfix"
    assert any(r.startswith("overridden:") for r in newest["reasons"])


def test_metrics_file_of_tipsv2_eval_carries_the_eval_data_version(tmp_path):
    f = tmp_path / "eval.json"
    f.write_text(json.dumps({MIOU: 0.3, "eval_data_version": "manifest-sha256:ab"}))
    metrics, lineage = load_metrics_file(f)
    assert metrics == {MIOU: 0.3}
    assert lineage == {"eval_data_version": "manifest-sha256:ab"}


def test_features_and_export_take_models_uris(
    sqlite_uri, exported, image_files, tmp_path, monkeypatch
):
    """`--checkpoint models:/...` in the other commands: features runs on the registered
    export, export on the native checkpoint the version was exported from."""
    name = "nano-uris"
    version = reg(sqlite_uri, exported[1], name, miou=0.3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.setenv("TIPSV2_HOME", str(tmp_path / "home"))
    png = tmp_path / "pca.png"
    rc, _, err = cli(
        "features", "--checkpoint", f"models:/{name}@challenger", image_files[0],
        "--image-size", str(SIZE), "--out", str(png),
    )  # fmt: skip
    assert rc == 0 and png.is_file(), err
    # This version's checkpoint is in an S3 bucket this machine cannot see: refused.
    again = ["--out", str(tmp_path / "again"), "--image-size", str(SIZE)]
    rc, _, err = cli("export", "--checkpoint", f"models:/{name}/{version}", *again)
    assert rc == 2 and "native checkpoint s3://" in err and "not reachable here" in err, err
    native = register_export(
        exported[1], name, {MIOU: 0.3}, checkpoint_uri=str(exported[0]), tracking_uri=sqlite_uri
    )
    rc, _, err = cli("export", "--checkpoint", f"models:/{name}/{native.version}", *again)
    assert rc == 0 and (tmp_path / "again" / "COMPLETE").is_file(), err
