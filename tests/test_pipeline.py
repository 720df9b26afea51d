"""The Kubeflow pipeline (pipelines/dag.py) and its CLI (`tipsv2 pipeline`, `tipsv2 run`).

Unit tier: compile the DAG to IR YAML and read it back (steps, edges, gates, exit
handler, retries, caching, resources, secrets), the CLI's argument handling, the step
glue that needs no training, and the local runner's log and summary parsing. The e2e
tier runs `tipsv2 run --smoke` through the real console script.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.cli import main
from pipelines.cli.pipeline import (
    RunLog,
    build_summary,
    cron_expression,
    format_summary,
    parse_params,
    pipeline_parameters,
)
from pipelines.dag import CACHED_STEPS, DEFAULT_IMAGE, compile_pipeline

IMAGE = "registry.example/tipsv2@sha256:" + "ab" * 32
STEPS = {
    "preflight",
    "prepare-data",
    "validate-data",
    "stop-on-invalid-data",
    "version-data",
    "build-tokenizer",
    "pretrain",
    "distill",
    "evaluate",  # the teacher's
    "evaluate-2",  # each student's, in the loop
    "select-candidate",
    "export-onnx",
    "register-model",
    "gate-decision",
    "promote-model",
    "deploy-model",
    "finish-run",
}
RETRIED = STEPS - {"stop-on-invalid-data"}
TRACKING = {"finish-run", "evaluate", "evaluate-2", "register-model", "gate-decision"}
TRACKING |= {"promote-model", "deploy-model", "pretrain", "distill"}


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> dict[str, Any]:
    """The compiled pipeline: `spec` (the IR), `platform` (Kubernetes), `tasks` (every
    task of every DAG by name, with `dag`: the DAG component that holds it)."""
    out = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    compile_pipeline(str(out), IMAGE)
    spec, platform = yaml.safe_load_all(out.read_text())
    dags = {"root": spec["root"]} | {
        name: comp for name, comp in spec["components"].items() if "dag" in comp
    }
    tasks = {}
    for dag_name, comp in dags.items():
        for name, task in comp["dag"]["tasks"].items():
            assert name not in tasks, f"task name {name} appears twice"
            tasks[name] = {**task, "dag": dag_name}
    return {"spec": spec, "platform": platform, "tasks": tasks, "dags": dags}


def _component_tasks(ir) -> dict[str, dict]:
    """Tasks that run a container (not a nested DAG)."""
    executors = ir["spec"]["deploymentSpec"]["executors"]
    return {
        name: t
        for name, t in ir["tasks"].items()
        if ir["spec"]["components"][t["componentRef"]["name"]].get("executorLabel") in executors
    }


def _executor(ir, task: str) -> dict:
    comp = ir["spec"]["components"][ir["tasks"][task]["componentRef"]["name"]]
    return ir["spec"]["deploymentSpec"]["executors"][comp["executorLabel"]]


def _producers(task: dict) -> set[str]:
    """Tasks whose outputs `task` consumes directly, plus its explicit dependencies."""
    found = set(task.get("dependentTasks") or [])
    for kind in ("artifacts", "parameters"):
        for spec in (task.get("inputs") or {}).get(kind, {}).values():
            for key in ("taskOutputArtifact", "taskOutputParameter"):
                if key in spec:
                    found.add(spec[key]["producerTask"])
    return found


def _ancestors(ir, task: str) -> list[str]:
    """The chain of DAG tasks (exit handler, conditions, loop) that contain `task`."""
    owner = {t["componentRef"]["name"]: name for name, t in ir["tasks"].items()}
    chain, dag = [], ir["tasks"][task]["dag"]
    while dag != "root":
        parent = owner[dag]
        chain.append(parent)
        dag = ir["tasks"][parent]["dag"]
    return chain


# ---------------------------------------------------------------------------------------
# the compiled DAG


def test_every_step_is_a_component_task(ir):
    assert set(_component_tasks(ir)) == STEPS


def _loop(ir) -> str:
    (name,) = [n for n, x in ir["tasks"].items() if "parameterIterator" in x]
    return name


def test_data_flows_as_designed(ir):
    t = ir["tasks"]
    loop = _loop(ir)
    edges = {
        "validate-data": {"prepare-data"},
        "version-data": {"prepare-data"},
        "build-tokenizer": {"prepare-data"},
        "pretrain": {"prepare-data", "build-tokenizer", "version-data", "preflight"},
        "distill": {"prepare-data", "build-tokenizer", "pretrain"},
        "evaluate": {"pretrain", "prepare-data"},
        "evaluate-2": {"distill", "prepare-data"},
        "select-candidate": {"pretrain", "evaluate", "LOOP"},
        "export-onnx": {"select-candidate"},
        "register-model": {"export-onnx", "select-candidate", "version-data"},
        "gate-decision": {"register-model", "select-candidate"},
        "promote-model": {"register-model", "select-candidate"},
        "deploy-model": {"register-model", "promote-model"},
        "stop-on-invalid-data": {"validate-data"},
    }
    for task, want in edges.items():
        want = {loop if w == "LOOP" else w for w in want}
        # Inputs from outside a nested DAG arrive as its inputs: resolve them by name.
        got = set(_producers(t[task]))
        for spec in (t[task].get("inputs") or {}).get("parameters", {}).values():
            ref = spec.get("componentInputParameter", "")
            got |= {p for p in STEPS if ref.startswith(f"pipelinechannel--{p}-")}
        for spec in (t[task].get("inputs") or {}).get("artifacts", {}).values():
            ref = spec.get("componentInputArtifact", "")
            got |= {p for p in STEPS if ref.startswith(f"pipelinechannel--{p}-")}
        assert want <= got | _outer_producers(ir, task), (task, want - got)
    # Collected loop outputs reach select-candidate as artifact lists.
    comp = ir["spec"]["components"][t["select-candidate"]["componentRef"]["name"]]
    arts = comp["inputDefinitions"]["artifacts"]
    assert arts["students"].get("isArtifactList") and arts["student_metrics"].get("isArtifactList")
    # The loop runs over preflight's checked list of student variants.
    items = t[loop]["parameterIterator"]["items"]
    assert items == {"inputParameter": "pipelinechannel--preflight-Output"}
    assert {"preflight"} <= _producers(t[loop]) | _outer_producers(ir, loop)
    inside = {n for n, x in t.items() if x["dag"] == t[loop]["componentRef"]["name"]}
    assert inside == {"distill", "evaluate-2"}
    # kfp 2.17.3's local runner replaces every task-output parameter that enters a loop
    # with the loop item (a student got data_version "nano14"): only the item list may.
    outputs_in = {
        name
        for name, spec in t[loop]["inputs"]["parameters"].items()
        if "taskOutputParameter" in spec
    }
    assert outputs_in <= {"pipelinechannel--preflight-Output"}


def _outer_producers(ir, task: str) -> set[str]:
    """Producers of the values that the DAGs around `task` pass into it."""
    found: set[str] = set()
    for dag_task in _ancestors(ir, task):
        found |= _producers(ir["tasks"][dag_task])
    return found


def test_validation_gate_guards_everything_after_it(ir):
    t = ir["tasks"]
    passed = "pipelinechannel--validate-data-passed"
    guarded = STEPS - {"preflight", "prepare-data", "validate-data", "finish-run"}
    guarded -= {"stop-on-invalid-data"}
    for task in guarded:
        conds = [t[a].get("triggerPolicy", {}).get("condition", "") for a in _ancestors(ir, task)]
        assert any(c == f"inputs.parameter_values['{passed}'] == true" for c in conds), task
    conds = [
        t[a].get("triggerPolicy", {}).get("condition", "")
        for a in _ancestors(ir, "stop-on-invalid-data")
    ]
    assert f"!(inputs.parameter_values['{passed}'] == true)" in conds
    # The failing branch stops the run: it gets the GX summary and is never retried.
    stop = t["stop-on-invalid-data"]
    assert "retryPolicy" not in stop
    assert "validate-data-summary" in json.dumps(stop["inputs"])


def test_promotion_is_conditional_on_the_gate_decision(ir):
    t = ir["tasks"]
    conds = [
        t[a].get("triggerPolicy", {}).get("condition", "") for a in _ancestors(ir, "promote-model")
    ]
    assert "inputs.parameter_values['pipelinechannel--gate-decision-Output'] == true" in conds
    assert "gate-decision" not in [a for a in _ancestors(ir, "register-model")]


def test_deploy_runs_only_after_a_promotion(ir):
    t = ir["tasks"]
    conds = [
        t[a].get("triggerPolicy", {}).get("condition", "") for a in _ancestors(ir, "deploy-model")
    ]
    assert "inputs.parameter_values['pipelinechannel--gate-decision-Output'] == true" in conds
    assert "inputs.parameter_values['pipelinechannel--promote-model-Output'] == 'promoted'" in conds


def test_promotion_rules_are_a_parameter_checked_up_front(ir):
    """The gate's rules (margins, tolerance, ...) come from the `promotion` parameter:
    the preflight step checks them before any work, the gate and the promotion use them."""
    params = ir["spec"]["root"]["inputDefinitions"]["parameters"]
    assert params["promotion"]["parameterType"] == "STRUCT"
    for name in ("preflight", "gate-decision", "promote-model"):
        inputs = ir["tasks"][name]["inputs"]["parameters"]
        key = "promotion" if name == "preflight" else "rules"
        assert inputs[key]["componentInputParameter"] == "pipelinechannel--promotion", name


def test_exit_handler_records_the_final_status(ir):
    t = ir["tasks"]
    root = ir["spec"]["root"]["dag"]["tasks"]
    assert set(root) == {"finish-run", t["finish-run"]["dependentTasks"][0]}
    handler = t["finish-run"]["dependentTasks"][0]
    assert t["finish-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    params = t["finish-run"]["inputs"]["parameters"]
    assert params["status"] == {"taskFinalStatus": {"producerTask": handler}}
    assert params["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    # Every other step runs inside the handler.
    for task in STEPS - {"finish-run"}:
        assert handler in _ancestors(ir, task), task


def test_caching_only_on_data_and_training(ir):
    for name, task in _component_tasks(ir).items():
        enabled = bool((task.get("cachingOptions") or {}).get("enableCache"))
        assert enabled == (name in CACHED_STEPS), name
    # Cached steps take no pipeline run id (it would change every cache key).
    for name in CACHED_STEPS:
        assert "pipeline_job_uuid" not in json.dumps(ir["tasks"][name]["inputs"]), name


def test_retries_with_backoff_on_storage_and_tracking_steps(ir):
    for name, task in _component_tasks(ir).items():
        policy = task.get("retryPolicy")
        if name not in RETRIED:
            assert policy is None, name
            continue
        assert policy["maxRetryCount"] >= 1, name
        assert policy["backoffDuration"].endswith("s") and float(policy["backoffFactor"]) > 1


def test_resources_per_step_and_from_parameters_for_training(ir):
    for name in ("pretrain", "distill"):
        res = _executor(ir, name)["container"]["resources"]
        assert res["resourceCpuLimit"] == "{{$.inputs.parameters['pipelinechannel--train_cpu']}}"
        assert "pipelinechannel--train_memory" in res["resourceMemoryLimit"]
        assert res["accelerator"] == {
            "resourceCount": "{{$.inputs.parameters['pipelinechannel--gpus']}}",
            "resourceType": "{{$.inputs.parameters['pipelinechannel--accelerator']}}",
        }
        # Requested as limited: Ray sizes itself from them.
        assert res["resourceCpuRequest"] == res["resourceCpuLimit"]
        assert res["resourceMemoryRequest"] == res["resourceMemoryLimit"]
    for name in STEPS - {"pretrain", "distill"}:
        res = _executor(ir, name)["container"]["resources"]
        assert float(res["resourceCpuLimit"]) > 0 and res["resourceMemoryLimit"], name
        assert res["resourceCpuRequest"] and res["resourceMemoryRequest"], name
        assert "accelerator" not in res, name


def test_no_step_installs_kfp_at_run_time(ir):
    """The image has kfp: a task that ran `pip install kfp` would fail air-gapped."""
    for name in STEPS:
        container = _executor(ir, name)["container"]
        assert "pip install" not in " ".join(container["command"] + container["args"]), name


def test_training_placement_from_parameters(ir):
    """Node selector and tolerations of the training pods are pipeline parameters (empty:
    anywhere), wired into kfp-kubernetes' platform spec; other steps are not constrained."""
    executors = ir["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    params = ir["spec"]["root"]["inputDefinitions"]["parameters"]
    assert params["train_node_selector"]["parameterType"] == "STRUCT"
    assert params["train_tolerations"]["parameterType"] == "LIST"
    for name in STEPS:
        label = ir["spec"]["components"][ir["tasks"][name]["componentRef"]["name"]]
        cfg = executors[label["executorLabel"]]
        if name in ("pretrain", "distill"):
            selector = cfg["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
            assert selector == "pipelinechannel--train_node_selector", name
            tolerations = [
                t["tolerationJson"]["componentInputParameter"] for t in cfg["tolerations"]
            ]
            assert tolerations == ["pipelinechannel--train_tolerations"], name
            (mount,) = cfg["pvcMount"]
            assert mount["mountPath"] == "/mnt/tipsv2" and "tipsv2-shared" in json.dumps(mount)
        else:
            assert not {"nodeSelector", "tolerations", "pvcMount"} & set(cfg), name


def test_training_attaches_to_a_ray_cluster_when_given_its_address(ir):
    """`ray_address` and the staging folder reach both training steps as inputs (so they
    are part of the cache key and declared in the nested DAGs); empty: Ray in the pod."""
    params = ir["spec"]["root"]["inputDefinitions"]["parameters"]
    assert params["ray_address"]["defaultValue"] == ""
    assert params["ray_shared_dir"]["defaultValue"] == "/mnt/tipsv2/jobs"
    for name in ("pretrain", "distill"):
        inputs = ir["tasks"][name]["inputs"]["parameters"]
        assert inputs["ray_address"]["componentInputParameter"] == "pipelinechannel--ray_address"
        shared = inputs["shared_dir"]["componentInputParameter"]
        assert shared == "pipelinechannel--ray_shared_dir"


def test_nested_dags_declare_every_input_they_use(ir):
    """kfp 2.17.3 leaves a parameter used only in a resource limit or as loop items out of
    nested DAGs' inputs; then the run fails ('Parent pipeline input argument ... not
    found'), on a cluster and locally. Every reference must resolve."""
    for name, comp in ir["dags"].items():
        defs = comp.get("inputDefinitions") or {}
        declared = set(defs.get("parameters") or {}) | set(defs.get("artifacts") or {})
        for task_name, task in comp["dag"]["tasks"].items():
            for kind in ("parameters", "artifacts"):
                for spec in (task.get("inputs") or {}).get(kind, {}).values():
                    for key in ("componentInputParameter", "componentInputArtifact"):
                        if key in spec:
                            assert spec[key] in declared, (name, task_name, spec[key])
            for ref in re.findall(r"parameters\['([^']+)'\]", json.dumps(task)):
                assert ref in (task.get("inputs") or {}).get("parameters", {}), (task_name, ref)


def test_credentials_come_from_kubernetes_secrets_only(ir):
    executors = ir["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in STEPS:
        label = ir["spec"]["components"][ir["tasks"][name]["componentRef"]["name"]]
        cfg = executors[label["executorLabel"]]
        secrets = {s["secretName"]: s for s in cfg["secretAsEnv"]}
        envs = {e["envVar"] for e in secrets["tipsv2-s3"]["keyToEnv"]}
        assert envs == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, name
        assert ("tipsv2-mlflow" in secrets) == (name in TRACKING), name
        maps = {m["configMapName"] for m in cfg["configMapAsEnv"]}
        assert maps == {"tipsv2-env"}
    params = ir["spec"]["root"]["inputDefinitions"]["parameters"]
    secretish = re.compile(r"(^|_)(secret|password|token|access_key|credentials?)(_|$)", re.I)
    assert not [p for p in params if secretish.search(p)]


def test_image_is_the_base_image_of_every_step_and_recorded(ir):
    for name in STEPS:
        container = _executor(ir, name)["container"]
        assert container["image"] == IMAGE, name
        assert {"name": "TIPSV2_IMAGE", "value": IMAGE} in container["env"], name


def test_pipeline_parameters_and_defaults():
    params = pipeline_parameters()
    assert params["recipe"] == "demo" and params["sources"] == []
    assert params["student_variants"] == ["nano14"] and params["workers"] == 1
    assert params["model_name"] == "tipsv2-demo" and params["experiment"] == "tipsv2"
    assert {
        "synth_images",
        "synth_seed",
        "primary_metric",
        "gpus",
        "train_cpu",
        "train_memory",
    } <= set(params)


# ---------------------------------------------------------------------------------------
# the CLI: compile, submit


def test_cli_compile_writes_yaml_with_the_pinned_image(tmp_path, capsys):
    out = tmp_path / "sub" / "pipeline.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--image", IMAGE]) == 0
    assert json.loads(capsys.readouterr().out)["image"] == IMAGE
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "tipsv2"
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {IMAGE}
    assert main(["pipeline", "compile", "--out", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {DEFAULT_IMAGE}


def test_param_parsing():
    known = pipeline_parameters()
    got = parse_params(
        ["synth_images=64", "student-variants=nano14,nano14", "train_cpu=4", "sources=[]"], known
    )
    assert got == {
        "synth_images": 64,
        "student_variants": ["nano14", "nano14"],
        "train_cpu": "4",
        "sources": [],
    }
    assert parse_params(['validation={"min_samples": 5}'], known) == {
        "validation": {"min_samples": 5}
    }
    with pytest.raises(ValueError, match="no such pipeline parameter.*recipe"):
        parse_params(["recipee=demo"], known)
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_params(["recipe"], known)


def test_cron_expression():
    assert cron_expression("0 3 * * *") == "0 0 3 * * *"
    assert cron_expression("0 0 3 * * 1-5") == "0 0 3 * * 1-5"
    for bad in ("0 3 * *", "every day", "0 3 * * * * *"):
        with pytest.raises(ValueError, match="cron"):
            cron_expression(bad)


def test_submit_checks_arguments_before_contacting_the_server(capsys):
    t0 = time.perf_counter()
    # A bad parameter or schedule fails at once, whatever the host.
    args = ["pipeline", "submit", "--host", "http://127.0.0.1:9"]
    assert main([*args, "--param", "nope=1"]) == 2
    assert "no such pipeline parameter" in capsys.readouterr().err
    assert main([*args, "--schedule", "daily"]) == 2
    assert "cron" in capsys.readouterr().err
    assert main(["pipeline", "submit", "--host", "localhost:8888"]) == 2
    assert "expected http(s)://" in capsys.readouterr().err
    # No retries against the server (those back off for minutes); in-process compiling
    # of the pipeline takes 3-4 s alone, ~11 s late in a whole-suite run.
    assert time.perf_counter() - t0 < 30


def test_submit_to_an_unreachable_host_fails_with_a_clear_error(capsys):
    t0 = time.perf_counter()
    rc = main(["pipeline", "submit", "--host", "http://127.0.0.1:9", "--timeout", "3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "cannot reach Kubeflow Pipelines at http://127.0.0.1:9" in err
    assert "Traceback" not in err
    assert time.perf_counter() - t0 < 15


# ---------------------------------------------------------------------------------------
# step glue that needs no training


def test_select_candidate_takes_the_best_and_prefers_the_teacher_on_ties():
    from components.steps import select_candidate

    metric = "eval/zeroshot_seg/synth/miou"
    teacher = {"name": "pretrain/nano14", "model_dir": "/t", "metrics": {metric: 0.2}}
    student = {"name": "distill/nano14", "model_dir": "/s", "metrics": {metric: 0.3}}
    best = select_candidate([teacher, student])
    assert best["name"] == "distill/nano14" and best["primary_metric"] == metric
    assert best["ranking"] == {"pretrain/nano14": 0.2, "distill/nano14": 0.3}
    tie = {**student, "metrics": {metric: 0.2}}
    assert select_candidate([teacher, tie])["name"] == "pretrain/nano14"
    with pytest.raises(ValueError, match="no finite value"):
        select_candidate([teacher, {**student, "metrics": {metric: float("nan")}}])
    with pytest.raises(ValueError, match="primary metric"):
        select_candidate([{**teacher, "metrics": {"eval/retrieval/x/i2t_r@1": 1.0}}])


def test_plan_students_rejects_unknown_names_before_any_work():
    from components.steps import plan_students

    assert plan_students("demo", ["nano14", "nano14"]) == ["nano14"]
    with pytest.raises(ValueError, match="unknown student variant"):
        plan_students("demo", ["nano15"])
    with pytest.raises(ValueError, match="unknown recipe"):
        plan_students("demoo", ["nano14"])


def test_promotion_rules_are_checked_before_any_work():
    from components.steps import check_promotion_rules

    check_promotion_rules({})
    check_promotion_rules(
        {"min_improvement": 0.01, "secondary": {"eval/retrieval/x/i2t_r@1": 0.02}}
    )
    with pytest.raises(ValueError, match="unknown gate config key"):
        check_promotion_rules({"min_improvment": 0.01})  # a typo
    with pytest.raises(ValueError, match="margin must be >= 0"):
        check_promotion_rules({"secondary": {"eval/retrieval/x/i2t_r@1": -1}})


def test_validation_settings_are_checked_before_any_work():
    """The `validation` pipeline parameter is checked by preflight against
    ValidationConfig's schema: an error names the bad key and the expected type."""
    from components.steps import check_validation_config

    check_validation_config({})
    check_validation_config({"min_samples": 10, "class_coverage": "auto"})
    with pytest.raises(ValueError, match=r"unknown validation settings \['min_sample'\]"):
        check_validation_config({"min_sample": 10})
    with pytest.raises(ValueError, match="max_reject_rate: expected float, got 'high'"):
        check_validation_config({"max_reject_rate": "high"})


def test_cpu_quantities():
    from components.steps.train import _cpus, worker_cpus

    assert _cpus("2") == 2.0 and _cpus("500m") == 0.5
    with pytest.raises(ValueError):
        _cpus("0")
    # One worker trains on the whole limit (torch threads = its share), not on one core.
    assert worker_cpus(2.0, 1) == 2.0 and worker_cpus(4.0, 2) == 2.0
    assert worker_cpus(1.0, 4) == 0.5


def test_stop_pipeline_raises_with_the_summary():
    from components.steps import stop_pipeline
    from components.validate import ValidationFailed

    with pytest.raises(ValidationFailed, match="validation FAILED: 1 of 9"):
        stop_pipeline("validation FAILED: 1 of 9 checks")


# ---------------------------------------------------------------------------------------
# tipsv2 run: progress from the runner's log, the summary from the task outputs


def test_run_log_records_starts_ends_and_cache_hits(tmp_path):
    log = (tmp_path / "run.log").open("w")
    rl = RunLog(log, None)
    rl.write("08:00:00.000 - INFO - Executing task \x1b[96m'prepare-data'\x1b[0m\nnoise\n")
    rl.write("08:00:01.000 - INFO - Task \x1b[96m'prepare-data'\x1b[0m finished with status ")
    rl.write("\x1b[92mSUCCESS\x1b[0m\n")
    rl.write("INFO - Task pretrain cache hit (key=abc); skipping execution.\n")
    rl.write("Executing task 'stop-on-invalid-data'\nTask 'stop-on-invalid-data' finished")
    rl.write(" with status FAILURE\n")
    log.close()
    got = [(s.name, s.status) for s in rl.steps]
    assert got == [
        ("prepare-data", "SUCCESS"),
        ("pretrain", "cached"),
        ("stop-on-invalid-data", "FAILURE"),
    ]
    assert rl.steps[0].seconds is not None and rl.steps[0].seconds >= 0
    assert "noise" in (tmp_path / "run.log").read_text()


def _task(run_dir: Path, path: str, params: dict | None = None, **artifacts: dict) -> None:
    folder = run_dir / path
    folder.mkdir(parents=True)
    doc = {
        "parameterValues": params or {},
        "artifacts": {k: {"artifacts": [v]} for k, v in artifacts.items()},
    }
    (folder / "executor_output.json").write_text(json.dumps(doc))


def test_summary_points_at_the_tracking_server_and_its_login(tmp_path, monkeypatch):
    """A run tracked on a server is looked at in a browser, not with `mlflow ui
    --backend-store-uri http://…`; for the local stack's server the summary names where
    its login is (the env file), never the password itself."""
    home = tmp_path / "home"
    (home / "stack").mkdir(parents=True)
    env_file = home / "stack" / "stack.env"
    env_file.write_text(
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5999\n"
        "export MLFLOW_TRACKING_USERNAME=tipsv2\n"
        "export MLFLOW_TRACKING_PASSWORD=s3cret-pass\n"
    )
    monkeypatch.setenv("TIPSV2_HOME", str(home))

    def mlflow_line(uri: str) -> str:
        text = format_summary({"status": "SUCCEEDED", "tracking_uri": uri})
        return next(line for line in text.splitlines() if line.startswith("mlflow:"))

    line = mlflow_line("http://127.0.0.1:5999")
    assert "http://127.0.0.1:5999" in line and str(env_file) in line
    assert "mlflow ui" not in line and "s3cret-pass" not in line
    other = mlflow_line("https://tracking.example.org")  # someone else's server
    assert other.split()[-1] == "https://tracking.example.org"
    assert mlflow_line("sqlite:///x/mlflow.db").endswith(
        "mlflow ui --backend-store-uri sqlite:///x/mlflow.db"
    )


def test_summary_from_task_outputs(tmp_path):
    run = tmp_path / "tipsv2-2026-01-01"
    metric = "eval/zeroshot_seg/synth/miou"
    _task(
        run,
        "validate-data",
        {"passed": True},
        report={
            "uri": str(run / "validate-data/report"),
            "metadata": {"num_samples": 120, "counts": {"train": 108}, "passed": True},
        },
    )
    controls = {
        "random_init": {metric: 0.0123},
        "colour_oracle": {"eval/colour_oracle/synth/miou": 0.0456},
    }
    for path, role, value in (
        ("evaluate", "teacher", 0.2),
        ("for-loop-3-iteration-0/evaluate-2", "student", 0.3),
    ):
        meta = {"role": role, "variant": "nano14"} | (controls if role == "teacher" else {})
        _task(
            run,
            path,
            metrics={"uri": "m", "metadata": {metric: value}},
            report={"uri": f"{path}/report", "metadata": meta},
        )
    _task(run, "select-candidate", {"name": "distill/nano14"})
    _task(run, "export-onnx", onnx_model={"uri": "/x/onnx", "metadata": {"max_abs_diff": 1e-6}})
    _task(run, "register-model", {"Output": "3"})
    _task(
        run,
        "gate-decision",
        {"Output": True},
        decision={"uri": "d", "metadata": {"reasons": ["no champion yet: first model"]}},
    )
    _task(run, "promote-model", {"Output": "promoted"})
    s = build_summary(run, [], None)
    assert s["status"] == "SUCCEEDED" and s["data"]["num_samples"] == 120
    assert s["teacher"]["metrics"][metric] == 0.2
    assert [x["metrics"][metric] for x in s["students"]] == [0.3]
    assert s["promotion"]["action"] == "promoted" and s["registered_version"] == "3"
    assert s["onnx_model"] == "/x/onnx"
    text = format_summary(s)
    assert (
        "promotion: promoted" in text
        and "0.3000" in text
        and "mlflow ui --backend-store-uri" in text
    )
    # The random-init control stands beside the teacher and students, on the same row.
    header = next(line for line in text.splitlines() if line.startswith("metric"))
    assert header.split()[-2:] == ["random", "init"]
    row = next(line for line in text.splitlines() if line.startswith(metric))
    assert row.split()[1:] == ["0.2000", "0.3000", "0.0123"]
    assert "colour-only oracle" in text and "0.0456" in text


# ---------------------------------------------------------------------------------------
# e2e: the whole DAG through the real console script

TIPSV2 = str(Path(sys.executable).with_name("tipsv2"))


def _env(home: Path) -> dict[str, str]:
    """The embedded defaults in a home of the test's own: no stack, no outside services."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    return env | {"TIPSV2_HOME": str(home), "TIPSV2_STACK": "off", "TIPSV2_STORAGE_ROOT": ""}


def _run(home: Path, *args: str) -> tuple[int, dict, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [TIPSV2, "run", "--smoke", "--json", "--quiet", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads(lines[-1]), proc.stdout, time.perf_counter() - t0


def _steps(summary: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in summary["steps"]:
        out.setdefault(s["step"], []).append(s["status"])
    return out


@pytest.fixture(scope="module")
def e2e_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e-home")


def assert_one_tree_per_pipeline_run(client: Any, exp: Any, parent: Any, s: dict) -> None:
    """MLflow as its users expect: the pipeline run is the only top-level run, named after
    it; every step (training and distillation too) is its child, by a readable name; the
    training and evaluation runs list their dataset; training has system metrics and more
    than one point per curve; the reports and the summary are the parent's artifacts."""
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in top] == [parent.info.run_id]
    assert parent.info.run_name == Path(s["run_dir"]).name  # KFP's name of the run
    children = {r.info.run_name: r for r in runs if r.info.run_id != parent.info.run_id}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
    for name in ("pretrain-nano14", "distill-nano14", "eval-teacher", "eval-student-nano14"):
        run = children[name]
        (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
        assert dataset.name == "synth" and dataset.digest.startswith("manifest-sha256:"), name
    train = children["pretrain-nano14"]
    assert any(k.startswith("system/") for k in train.data.metrics)
    assert len(client.get_metric_history(train.info.run_id, "train/loss")) == 4
    assert {a.path for a in client.list_artifacts(children["eval-teacher"].info.run_id, "reports")}
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "reports")}
    assert {"reports/validation.html", "reports/eval-teacher.html"} <= arts, arts
    assert "summary.txt" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    metric = "eval/zeroshot_seg/synth-val/miou"  # the dataset's name, not its folder's
    assert metric in s["teacher"]["metrics"]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.long
def test_tipsv2_run_smoke_end_to_end_then_from_the_cache(e2e_home):
    from mlflow import MlflowClient

    rc, s, text, wall = _run(e2e_home)
    assert rc == 0, text[-4000:]
    assert s["status"] == "SUCCEEDED" and s["error"] is None
    assert s["data"]["num_samples"] == 120 and s["data"]["passed"] is True
    assert sum(s["data"]["counts"].values()) == 120
    miou = [k for k in s["teacher"]["metrics"] if re.fullmatch(r"eval/zeroshot_seg/.+/miou", k)]
    assert len(miou) == 1 and 0.0 <= s["teacher"]["metrics"][miou[0]] <= 1.0
    assert [x["variant"] for x in s["students"]] == ["nano14"]
    assert miou[0] in s["students"][0]["metrics"]
    # The controls: a random-init encoder scored on the same split, and the colour oracle.
    assert 0.0 <= s["random_init"][miou[0]] <= 1.0
    assert [k for k in s["colour_oracle"] if k.endswith("/miou")]
    assert "random init" in text and "colour-only oracle" in text
    assert s["promotion"]["passed"] is True and s["promotion"]["action"] == "promoted"
    assert s["registered_version"] == "1"
    onnx = Path(s["onnx_model"])
    assert (onnx / "export_meta.json").is_file() and list(onnx.glob("*.onnx"))
    assert s["parity_max_abs_diff"] < 1e-3
    for report in [s["validation_report"], *s["reports"]]:
        assert Path(report).read_text().lstrip().lower().startswith(("<!doctype", "<html"))
    steps = _steps(s)
    for name in ("prepare-data", "validate-data", "pretrain", "distill", "export-onnx"):
        assert steps[name] == ["SUCCESS"], (name, steps)
    assert "stop-on-invalid-data" not in steps
    # Lineage: teacher and student record the version of the data they were trained on.
    run_dir = Path(s["run_dir"])
    versions = {
        json.loads(p.read_text())["artifacts"]["model"]["artifacts"][0]["metadata"]["data_version"]
        for p in [
            run_dir / "pretrain/executor_output.json",
            *run_dir.glob("for-loop-*/distill/*.json"),
        ]
    }
    assert len(versions) == 1 and versions.pop().startswith("manifest-sha256:")
    assert all(x["seconds"] is not None for x in s["steps"] if x["status"] == "SUCCESS")
    for line in ("promotion: promoted", "mlflow ui --backend-store-uri sqlite:///", "onnx model:"):
        assert line in text

    uri = f"sqlite:///{e2e_home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    assert str(client.get_model_version_by_alias("tipsv2-demo", "champion").version) == "1"
    exp = client.get_experiment_by_name("tipsv2")
    parents = client.search_runs(
        [exp.experiment_id], "tags.tipsv2_kind = 'pipeline' and tags.pipeline_state = 'SUCCEEDED'"
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert_one_tree_per_pipeline_run(client, exp, parents[0], s)
    # The long steps' progress reached the run log (the terminal too, without --quiet).
    log = Path(s["log"]).read_text()
    for step in ("pretrain", "distill"):
        assert re.search(rf"\[progress\] {step} nano14: step \d/4 .*loss [\d.]+", log), step
    assert all(r.endswith(".html") for r in [s["validation_report"], *s["reports"]])

    # The same inputs again: data, tokenizer and training come from the cache. A stricter
    # promotion rule (not a training input) refuses the same model as a new challenger.
    strict = 'promotion={"min_improvement": 0.5}'
    rc, s2, text, wall2 = _run(e2e_home, "--param", strict)
    assert rc == 0, text[-4000:]
    steps = _steps(s2)
    for name in ("prepare-data", "build-tokenizer", "pretrain", "distill"):
        assert steps[name] == ["cached"], (name, steps)
    assert steps["evaluate-teacher"] == ["SUCCESS"]
    assert s2["registered_version"] == "2"
    assert s2["teacher"]["metrics"] == s["teacher"]["metrics"]  # the same cached model
    assert s2["promotion"]["passed"] is False and s2["promotion"]["action"] == "refused"
    assert any("0.5" in r for r in s2["promotion"]["reasons"]), s2["promotion"]
    assert "promote-model" not in {n for n, st in steps.items() if "SUCCESS" in st}
    assert str(client.get_model_version_by_alias("tipsv2-demo", "champion").version) == "1"
    assert wall2 < wall


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.long
def test_tipsv2_run_smoke_on_the_local_stack_behind_its_credentials(tmp_path):
    """The whole DAG as a user runs it beside `tipsv2 stack up` (MLflow behind its
    generated credentials, data on the S3 gateway): the runner and every step find the
    stack and its credentials through $TIPSV2_HOME alone; the runs, the registered model
    and the champion land on the server; the password is in no log, output or MLflow
    param or tag."""
    import os
    import urllib.error
    import urllib.request

    from components import stack
    from components.settings import read_env_file
    from components.tracking import client_for
    from tests.conftest import logged_in

    home = tmp_path / "home"
    stack.up(home, timeout=600)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env |= {"TIPSV2_HOME": str(home)}
        proc = subprocess.run(
            [TIPSV2, "run", "--smoke", "--json", "--quiet"],
            env=env, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text[-4000:]
        s = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
        assert s["status"] == "SUCCEEDED" and s["registered_version"] == "1"
        stack_env = read_env_file(home / "stack" / "stack.env")
        uri, password = stack_env["MLFLOW_TRACKING_URI"], stack_env["MLFLOW_TRACKING_PASSWORD"]
        with pytest.raises(urllib.error.HTTPError) as refused:  # still closed to others
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1")
        assert refused.value.code == 401

        with logged_in(home):
            client = client_for(uri)
            assert client.get_model_version_by_alias("tipsv2-demo", "champion").version == "1"
            exp = client.get_experiment_by_name("tipsv2")
            runs = client.search_runs([exp.experiment_id])
            assert len(runs) >= 5 and all(r.info.status == "FINISHED" for r in runs)
            for run in runs:
                data = run.data
                assert password not in json.dumps([data.params, data.tags], default=str)
        assert password not in text
        outputs = [p for p in Path(s["run_dir"]).rglob("*") if p.is_file()]
        for path in [Path(s["log"]), *outputs, *(home / "stack" / "logs").iterdir()]:
            if path.stat().st_size < 50_000_000:
                assert password.encode() not in path.read_bytes(), path
    finally:
        stack.down(home)


@pytest.mark.e2e
@pytest.mark.slow
def test_tipsv2_run_with_bad_data_stops_at_the_gate_and_trains_nothing(e2e_home):
    from mlflow import MlflowClient

    rc, s, text, _ = _run(e2e_home, "--param", 'validation={"min_samples": 100000}')
    assert rc == 1
    assert s["status"] == "FAILED" and "failed validation" in s["error"]
    assert s["data"]["passed"] is False
    assert any("min_samples" in f or "100000" in f for f in s["data"]["failures"]), s["data"]
    steps = _steps(s)
    assert steps["stop-on-invalid-data"] == ["FAILURE"]
    assert steps["finish-run"] == ["SUCCESS"]
    ran = {n for n, st in steps.items() if set(st) & {"SUCCESS", "cached"}}
    trained = {"version-data", "build-tokenizer", "pretrain", "distill"}
    assert not ran & (trained | {"evaluate-teacher", "register-model"})
    assert s["teacher"] is None and s["registered_version"] is None
    assert "validation FAILED" in text
    client = MlflowClient(tracking_uri=f"sqlite:///{e2e_home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tipsv2")
    failed = client.search_runs(
        [exp.experiment_id], "tags.tipsv2_kind = 'pipeline' and tags.pipeline_state = 'FAILED'"
    )
    assert len(failed) == 1 and failed[0].info.status == "FAILED"


def test_run_log_shows_a_long_steps_progress_lines(tmp_path):
    console = io.StringIO()
    with (tmp_path / "run.log").open("w") as log:
        rl = RunLog(log, console)
        rl.write("Executing task 'pretrain'\n")
        rl.write("[progress] pretrain nano14: step 2/4 (50%) loss 3.1000 9.0 img/s ETA 4s\n")
    assert "pretrain nano14: step 2/4 (50%) loss 3.1000 9.0 img/s ETA 4s" in console.getvalue()
    assert "[progress] pretrain nano14" in (tmp_path / "run.log").read_text()
    assert [s.name for s in rl.steps] == ["pretrain"]
