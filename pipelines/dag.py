"""The TIPSv2 Kubeflow Pipelines v2 DAG: data to a promoted model, in one pipeline.

    preflight ─┐
    prepare-data ─► validate-data ─► [If passed] version-data ─► build-tokenizer ─► pretrain
        ─► evaluate (teacher) ─┐
        ─► [ParallelFor student] distill ─► evaluate (student) ─┤
        ─► select-candidate ─► export-onnx (parity) ─► register-model ─► gate-decision
        ─► [If gate passed] promote-model ─► [If promoted] deploy-model
    [Else: validation failed] stop-on-invalid-data (raises with the GX summary)
    exit handler: finish-run (ends the MLflow parent run with the final state)

Every component is a thin function that imports one function of `components.steps` and
calls it with the paths KFP hands it; all the logic lives in `components/` (docs/architecture.md,
"Data flow of one pipeline run").
The same DAG runs on a Kubeflow cluster (`tipsv2 pipeline submit`) and locally on
`kfp.local.SubprocessRunner` (`tipsv2 run`).

Constraints of kfp 2.17.3 shape it (each measured on its local runner):
- A pipeline parameter used only as a ParallelFor item list or as a resource limit inside
  nested DAGs (exit handler, condition) is not passed down: the compiler leaves it out of
  the nested DAG's inputs. So the loop runs over `preflight`'s output (which also checks
  the variant names before any work) and the training steps take their resource
  parameters as inputs too (they size Ray from them).
- Inside a ParallelFor, the local runner replaces every task-output *parameter* coming
  from outside the loop with the loop item, so the loop gets only artifacts and pipeline
  parameters (the data version travels in the models' metadata); and it resolves a
  condition on a sibling task's output only when that output is the single `Output`
  (hence `gate-decision` returns a bare bool).
- `base_image` is fixed at compile time, so the container image is an argument of
  `build_pipeline` (`tipsv2 pipeline compile --image REF@sha256:...`), not a run
  parameter; every step also gets it as `TIPSV2_IMAGE` for MLflow lineage.

Caching is on for the steps whose outputs are pure functions of their inputs and expensive
(data, tokenizer, pretraining, distillation) and off for the rest: KFP enables caching by
default, which would replay evaluation, registration and the exit task from a previous
run. Cached steps take no pipeline run id (it would change every key).

This module has no `from __future__ import annotations`: KFP reads the component
signatures' annotations as objects.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.settings import TELEMETRY_OFF

PIPELINE_NAME = "tipsv2"
DEFAULT_IMAGE = "tipsv2:latest"  # infra/docker; pin a release by digest for production
# The ReadWriteMany volume of infra/k8s (base/shared-storage.yaml) that the RayCluster's
# pods mount too: training steps stage their inputs there when they attach to the cluster.
SHARED_PVC = "tipsv2-shared"
SHARED_MOUNT = "/mnt/tipsv2"

# Kubernetes objects of infra/k8s: the S3 credentials, optional MLflow credentials and the
# shared non-secret settings. Credentials only ever come from Secrets.
S3_SECRET = "tipsv2-s3"
S3_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}
MLFLOW_SECRET = "tipsv2-mlflow"
MLFLOW_SECRET_KEYS = {
    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
}
ENV_CONFIG_MAP = "tipsv2-env"
ENV_CONFIG_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "TIPSV2_STORAGE_ROOT",
    "MLFLOW_TRACKING_URI",
    "TIPSV2_STACK",
    "RAY_AUTH_MODE",
    *TELEMETRY_OFF,
)

# Retries with exponential backoff for steps that talk to object storage or MLflow: a
# restarting MinIO or tracking server should cost a delay, not the run.
RETRY = {
    "num_retries": 3,
    "backoff_duration": "15s",
    "backoff_factor": 2.0,
    "backoff_max_duration": "300s",
}
# Requests and limits of the light steps, (cpu, memory) each: the scheduler places a pod
# by its requests, the kernel caps it at its limits. The training steps request what they
# are limited to (pipeline parameters): Ray sizes itself from them, so they must be there.
LIGHT = (("250m", "512Mi"), ("1", "2G"))
MEDIUM = (("1", "2Gi"), ("2", "8G"))
# The ServiceAccount of infra/k8s/base/rbac.yaml that pipeline runs (their pods) use.
SERVICE_ACCOUNT = "tipsv2-pipeline"

CACHED_STEPS = ("prepare-data", "build-tokenizer", "pretrain", "distill")


# ---------------------------------------------------------------------------------------
# components: each imports one function of components.steps (imports inside: the function
# body is what runs in the container)


def preflight(
    recipe: str, student_variants: list[str], promotion: dict, validation: dict
) -> list[str]:
    """Checks the recipe, the student variant names, and the `promotion` and `validation`
    parameters against their schemas (an error names the bad key); returns the students
    to distil."""
    from components.steps import check_promotion_rules, check_validation_config, plan_students

    check_promotion_rules(promotion)
    check_validation_config(validation)
    return plan_students(recipe, student_variants)


def prepare_data(
    sources: list[str],
    synth_images: int,
    synth_seed: int,
    image_size: int,
    workers: int,
    dataset: Output[Dataset],
):
    """Curates the sources, or generates a synthetic dataset when there are none."""
    from components.steps import prepare_dataset

    doc = prepare_dataset(
        dataset.path,
        sources,
        synth_images=synth_images,
        image_size=image_size,
        seed=synth_seed,
        workers=workers,
    )
    dataset.metadata.update(doc)


def validate_data(dataset: Input[Dataset], config: dict, report: Output[HTML]) -> NamedTuple(
    "Validation", passed=bool, summary=str
):
    """The Great Expectations gate; its HTML report is the step's artifact."""
    import shutil
    import tempfile
    from collections import namedtuple

    from components.steps import validate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        doc = validate_dataset(dataset.path, tmp, config)
        shutil.copyfile(doc.pop("report"), report.path)
    report.metadata.update(doc)
    return namedtuple("Validation", ["passed", "summary"])(doc["passed"], doc["summary"])


def stop_on_invalid_data(summary: str):
    """Fails the run with the gate's summary: nothing is versioned or trained."""
    from components.steps import stop_pipeline

    stop_pipeline(summary)


def version_data(dataset: Input[Dataset]) -> str:
    """The dataset's version id (DVC md5, else its manifest's sha256) for lineage."""
    from components.steps import data_version

    return data_version(dataset.path)


def build_tokenizer(dataset: Input[Dataset], vocab_size: int, tokenizer: Output[Artifact]):
    """A SentencePiece tokenizer trained on the train split's captions."""
    from components.tokenizer import build_tokenizer as build

    artifact = build(dataset.path, tokenizer.path, vocab_size=vocab_size)
    tokenizer.metadata.update({"sha256": artifact.sha256, "vocab_size": artifact.vocab_size})


def pretrain(
    dataset: Input[Dataset],
    tokenizer: Input[Artifact],
    recipe: str,
    data_version: str,
    steps: int,
    batch_size: int,
    overrides: list[str],
    workers: int,
    cpus: str,
    memory: str,
    gpus: int,
    accelerator: str,
    node_selector: dict,
    tolerations: list,
    ray_address: str,
    shared_dir: str,
    experiment: str,
    model: Output[Model],
):
    """TIPSv2 pretraining on Ray Train; the model artifact is the run directory."""
    from components.steps import train_step

    kwargs = dict(locals())  # every parameter, as train_step takes them
    for artifact in ("dataset", "tokenizer", "model", "data_version", "train_step"):
        kwargs.pop(artifact)
    model.metadata.update(
        train_step("pretrain", model.path, dataset.path, tokenizer.path,
                   version=data_version, **kwargs)
    )  # fmt: skip


def distill(
    dataset: Input[Dataset],
    tokenizer: Input[Artifact],
    teacher: Input[Model],
    student_variant: str,
    recipe: str,
    steps: int,
    batch_size: int,
    overrides: list[str],
    workers: int,
    cpus: str,
    memory: str,
    gpus: int,
    accelerator: str,
    node_selector: dict,
    tolerations: list,
    ray_address: str,
    shared_dir: str,
    experiment: str,
    model: Output[Model],
):
    """Distils the frozen teacher into a randomly initialised `student_variant`; the data
    version is the teacher's (the same dataset)."""
    from components.steps import train_step

    kwargs = dict(locals())  # every parameter, as train_step takes them
    for artifact in ("dataset", "tokenizer", "teacher", "model", "train_step"):
        kwargs.pop(artifact)
    version = str(teacher.metadata.get("data_version", ""))
    model.metadata.update(
        train_step("distill", model.path, dataset.path, tokenizer.path,
                   teacher_dir=teacher.path, version=version, **kwargs)
    )  # fmt: skip


def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    role: str,
    tasks: list[str],
    limit: int,
    image_size: int,
    pipeline_run_id: str,
    experiment: str,
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """The evaluation protocols on the dataset's eval split: metrics and an HTML report.
    The data version comes from the model's metadata (see the loop in `build_pipeline`)."""
    from components.steps import evaluate_model

    doc = evaluate_model(
        model.path,
        dataset.path,
        report.path,
        role=role,
        tasks=tasks,
        limit=limit,
        image_size=image_size,
        eval_size=image_size,
        pipeline_run_id=pipeline_run_id,
        version=str(model.metadata.get("data_version", "")),
        experiment=experiment,
        training_group=str(model.metadata.get("mlflow_pipeline_run_id", "")),
    )
    for name, value in doc["metrics"].items():
        metrics.log_metric(name, value)
    report.metadata.update({k: v for k, v in doc.items() if k != "metrics"})


def select_candidate(
    teacher: Input[Model],
    teacher_metrics: Input[Metrics],
    students: Input[list[Model]],
    student_metrics: Input[list[Metrics]],
    primary_metric: str,
    candidate: Output[Model],
) -> NamedTuple("Candidate", name=str, metrics=dict, primary_metric=str):
    """The best of the teacher and the students on the primary metric, copied out as the
    model to export and register."""
    from collections import namedtuple

    from components.steps import copy_model
    from components.steps import select_candidate as select

    if len(students) != len(student_metrics):
        raise ValueError(f"{len(students)} students but {len(student_metrics)} evaluations")
    pool = [(teacher, teacher_metrics), *zip(students, student_metrics, strict=True)]
    candidates = [
        {
            "name": f"{m.metadata.get('kind', 'model')}/{m.metadata.get('variant', '?')}",
            "model_dir": m.path,
            "metrics": {k: float(v) for k, v in e.metadata.items()},
        }
        for m, e in pool
    ]
    best = select(candidates, primary_metric)
    copy_model(best["model_dir"], candidate.path)
    candidate.metadata.update({k: v for k, v in best.items() if k != "model_dir"})
    result = namedtuple("Candidate", ["name", "metrics", "primary_metric"])
    return result(best["name"], best["metrics"], best["primary_metric"])


def export_onnx(candidate: Input[Model], image_size: int, onnx_model: Output[Model]):
    """ONNX export with the parity check against PyTorch (fails on a mismatch)."""
    from components.steps import export_model

    onnx_model.metadata.update(export_model(candidate.path, onnx_model.path, [image_size]))


def register_model(
    onnx_model: Input[Model],
    metrics: dict,
    model_name: str,
    data_version: str,
    pipeline_run_id: str,
    experiment: str,
    eval_tasks: list[str],
    eval_limit: int,
    eval_image_size: int,
) -> str:
    """Registers the export in MLflow as a new version (alias challenger), with how its
    metrics were measured (for `tipsv2 reproduce`)."""
    from components.steps import register_model as register

    doc = register(
        onnx_model.path,
        model_name,
        metrics,
        version=data_version,
        pipeline_run_id=pipeline_run_id,
        experiment=experiment,
        eval_settings={
            "tasks": eval_tasks, "limit": eval_limit, "image_size": eval_image_size,
            "eval_size": eval_image_size,
        },
    )  # fmt: skip
    return doc["version"]


def gate_decision(
    model_name: str,
    model_version: str,
    primary_metric: str,
    rules: dict,
    decision: Output[Artifact],
) -> bool:
    """Whether the new version beats the champion (read only: the DAG branches on it).

    The verdict is the single return value: kfp 2.17.3's local runner resolves a
    condition on a sibling task's output only when that output is `Output`."""
    import json

    from components.steps import gate_decision as decide

    doc = decide(model_name, model_version, primary_metric, rules)
    with open(decision.path, "w") as f:
        json.dump(doc, f, indent=2)
    decision.metadata.update(doc)
    return bool(doc["passed"])


def promote_model(model_name: str, model_version: str, primary_metric: str, rules: dict) -> str:
    """Moves the champion alias to the new version and records the decision."""
    from components.steps import promote_model as promote

    return promote(model_name, model_version, primary_metric, rules)["action"]


def deploy_model(model_name: str, model_version: str) -> str:
    """Puts the new champion behind the serving endpoint (a KServe rollout on a cluster;
    locally the version the stack's server answers with) and records it."""
    import json

    from components.steps import deploy_model as deploy

    return json.dumps(deploy(model_name, model_version))


def finish_run(
    status: dsl.PipelineTaskFinalStatus, pipeline_run_id: str, pipeline_run_name: str,
    experiment: str,
) -> str:  # fmt: skip
    """The exit task: records the run's final state on its MLflow parent run, named after
    the pipeline run; returns the parent run's id."""
    from components.steps import finish_pipeline_run

    doc = finish_pipeline_run(
        pipeline_run_id, status.state, status.error_message or "", experiment=experiment,
        run_name=pipeline_run_name,
    )  # fmt: skip
    return doc["parent_run_id"]


COMPONENT_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    preflight,
    prepare_data,
    validate_data,
    stop_on_invalid_data,
    version_data,
    build_tokenizer,
    pretrain,
    distill,
    evaluate,
    select_candidate,
    export_onnx,
    register_model,
    gate_decision,
    promote_model,
    deploy_model,
    finish_run,
)


# ---------------------------------------------------------------------------------------
# task settings


def _platform_env(task: dsl.PipelineTask, image: str, tracking: bool = False) -> None:
    """Cluster settings from the ConfigMap, S3 (and MLflow) credentials from Secrets, and
    the image reference for lineage. Locally the Kubernetes parts are ignored."""
    kubernetes.use_config_map_as_env(
        task, ENV_CONFIG_MAP, {k: k for k in ENV_CONFIG_KEYS}, optional=True
    )
    kubernetes.use_secret_as_env(task, S3_SECRET, S3_SECRET_KEYS)
    if tracking:
        # Optional: a tracking server without authentication needs no Secret.
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_SECRET_KEYS, optional=True)
    task.set_env_variable("TIPSV2_IMAGE", image)


def _step(
    task: dsl.PipelineTask,
    image: str,
    *,
    cache: bool = False,
    retry: bool = True,
    tracking: bool = False,
    resources: tuple[tuple[str, str], tuple[str, str]] = LIGHT,
) -> dsl.PipelineTask:
    """One place for a task's caching, retries, resources (requests, limits) and
    environment."""
    task.set_caching_options(cache)
    if retry:
        task.set_retry(**RETRY)
    (cpu_req, mem_req), (cpu_lim, mem_lim) = resources
    task.set_cpu_request(cpu_req).set_memory_request(mem_req)
    task.set_cpu_limit(cpu_lim).set_memory_limit(mem_lim)
    _platform_env(task, image, tracking)
    return task


def _train(task: dsl.PipelineTask, image: str, placement: Mapping[str, Any]) -> dsl.PipelineTask:
    """A training step: cached; resources and placement from the task's own inputs
    (`cpus`, `memory`, `gpus`, `accelerator`, `node_selector`: {label: value}, and
    `tolerations`: a list of Kubernetes toleration objects). A limit of 0 GPUs requests
    none, so the same task runs on CPU nodes when `gpus` is 0; an empty selector or list
    constrains nothing. The shared volume is mounted for runs that attach to the Ray
    cluster (`ray_address`): their inputs are staged there, where every Ray node sees them."""
    task.set_caching_options(True)
    # One retry: Ray Train restarts failed workers itself; this covers a lost pod.
    task.set_retry(num_retries=1, backoff_duration="60s", backoff_factor=2.0)
    task.set_cpu_request(placement["cpus"]).set_memory_request(placement["memory"])
    task.set_cpu_limit(placement["cpus"]).set_memory_limit(placement["memory"])
    task.set_accelerator_type(placement["accelerator"]).set_accelerator_limit(placement["gpus"])
    kubernetes.add_node_selector_json(task, placement["node_selector"])
    kubernetes.add_toleration_json(task, placement["tolerations"])
    kubernetes.mount_pvc(task, pvc_name=SHARED_PVC, mount_path=SHARED_MOUNT)
    _platform_env(task, image, tracking=True)
    return task


# ---------------------------------------------------------------------------------------
# the pipeline


def build_pipeline(image: str = DEFAULT_IMAGE) -> Callable[..., Any]:
    """The pipeline with every component on `image` (a tag, or `name@sha256:<digest>` to
    pin it). Returns a KFP pipeline: compile it, submit it, or call it under kfp.local."""
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image must be a container reference, got {image!r}")
    # The image has kfp (infra/docker): no task starts with `pip install kfp`, which an
    # air-gapped cluster could not do anyway.
    ops = {
        f.__name__: dsl.component(f, base_image=image, install_kfp_package=False)
        for f in COMPONENT_FUNCTIONS
    }

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="TIPSv2: data -> validate -> version -> tokenizer -> pretrain -> distill "
        "-> evaluate -> export (ONNX parity) -> register -> promote -> deploy",
    )
    def tipsv2(
        recipe: str = "demo",
        sources: list[str] = [],  # noqa: B006 (KFP reads the default; none: synthetic data)
        synth_images: int = 4000,
        synth_seed: int = 0,  # another draw of the synthetic world (a fresh dataset)
        image_size: int = 112,
        student_variants: list[str] = ["nano14"],  # noqa: B006
        workers: int = 1,
        pretrain_steps: int = 0,
        distill_steps: int = 0,
        batch_size: int = 0,
        train_overrides: list[str] = [],  # noqa: B006
        validation: dict = {},  # noqa: B006 (components.validate.ValidationConfig fields)
        tokenizer_vocab: int = 1000,
        eval_tasks: list[str] = ["zeroshot_seg", "retrieval"],  # noqa: B006
        eval_limit: int = 0,  # 0: the whole eval split
        # The demo's own resolution, the synthetic images' native size: at 224 every
        # image is upsampled 2x and the 8x8 patch grid the model learnt becomes 16x16
        # (README, "Learning dense alignment", item 10).
        eval_image_size: int = 112,
        export_image_size: int = 224,
        primary_metric: str = "",
        promotion: dict = {},  # noqa: B006 (components.promote.GateConfig: margins, tolerance)
        model_name: str = "tipsv2-demo",
        experiment: str = "tipsv2",
        train_cpu: str = "2",
        train_memory: str = "8G",
        gpus: int = 0,
        accelerator: str = "nvidia.com/gpu",
        train_node_selector: dict = {},  # noqa: B006 ({label: value} of the training nodes)
        train_tolerations: list = [],  # noqa: B006 (Kubernetes tolerations, e.g. of GPU taints)
        ray_address: str = "",  # "": Ray in the step's pod; else a cluster's Jobs API URL
        ray_shared_dir: str = SHARED_MOUNT + "/jobs",  # staging that every Ray node sees
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        exit_task = ops["finish_run"](
            pipeline_run_id=run_id,
            pipeline_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            experiment=experiment,
        )
        _step(exit_task, image, tracking=True).set_display_name("finish-run")
        with dsl.ExitHandler(exit_task, name="tipsv2-run"):
            plan = _step(
                ops["preflight"](
                    recipe=recipe,
                    student_variants=student_variants,
                    promotion=promotion,
                    validation=validation,
                ),
                image,
            )
            data = ops["prepare_data"](
                sources=sources,
                synth_images=synth_images,
                synth_seed=synth_seed,
                image_size=image_size,
                workers=workers,
            )
            _step(data, image, cache=True, resources=MEDIUM)
            check = ops["validate_data"](dataset=data.outputs["dataset"], config=validation)
            _step(check, image, resources=MEDIUM)

            with dsl.If(check.outputs["passed"] == True, name="data-valid"):  # noqa: E712
                version = _step(ops["version_data"](dataset=data.outputs["dataset"]), image)
                tok = ops["build_tokenizer"](
                    dataset=data.outputs["dataset"], vocab_size=tokenizer_vocab
                )
                _step(tok, image, cache=True)
                train_args = {
                    "dataset": data.outputs["dataset"],
                    "tokenizer": tok.outputs["tokenizer"],
                    "recipe": recipe,
                    "batch_size": batch_size,
                    "overrides": train_overrides,
                    "workers": workers,
                    # Also inputs, not only limits and placement: Ray sizes itself from
                    # them, the model records them, and kfp 2.17.3 passes a parameter
                    # into nested DAGs only when a task input uses it (a channel used
                    # only in a limit or a node selector is left out).
                    "cpus": train_cpu,
                    "memory": train_memory,
                    "gpus": gpus,
                    "accelerator": accelerator,
                    "node_selector": train_node_selector,
                    "tolerations": train_tolerations,
                    "ray_address": ray_address,
                    "shared_dir": ray_shared_dir,
                    "experiment": experiment,
                }
                teacher = ops["pretrain"](
                    steps=pretrain_steps, data_version=version.output, **train_args
                )
                _train(teacher, image, train_args).after(plan)
                eval_args = {
                    "dataset": data.outputs["dataset"],
                    "tasks": eval_tasks,
                    "limit": eval_limit,
                    "image_size": eval_image_size,
                    "pipeline_run_id": run_id,
                    "experiment": experiment,
                }
                teacher_eval = ops["evaluate"](
                    model=teacher.outputs["model"], role="teacher", **eval_args
                )
                _step(teacher_eval, image, tracking=True, resources=MEDIUM)
                teacher_eval.set_display_name("evaluate-teacher")

                # kfp 2.17.3's local runner replaces every task-output *parameter* that
                # enters a ParallelFor with the loop item, so the loop takes artifacts
                # and pipeline parameters only (the data version rides on the models).
                with dsl.ParallelFor(plan.output, name="students") as variant:
                    student = ops["distill"](
                        teacher=teacher.outputs["model"],
                        student_variant=variant,
                        steps=distill_steps,
                        **train_args,
                    )
                    _train(student, image, train_args)
                    student_eval = ops["evaluate"](
                        model=student.outputs["model"], role="student", **eval_args
                    )
                    _step(student_eval, image, tracking=True, resources=MEDIUM)
                    student_eval.set_display_name("evaluate-student")

                pick = ops["select_candidate"](
                    teacher=teacher.outputs["model"],
                    teacher_metrics=teacher_eval.outputs["metrics"],
                    students=dsl.Collected(student.outputs["model"]),
                    student_metrics=dsl.Collected(student_eval.outputs["metrics"]),
                    primary_metric=primary_metric,
                )
                _step(pick, image)
                onnx = ops["export_onnx"](
                    candidate=pick.outputs["candidate"], image_size=export_image_size
                )
                _step(onnx, image, resources=MEDIUM)
                registered = ops["register_model"](
                    onnx_model=onnx.outputs["onnx_model"],
                    metrics=pick.outputs["metrics"],
                    model_name=model_name,
                    data_version=version.output,
                    pipeline_run_id=run_id,
                    experiment=experiment,
                    eval_tasks=eval_tasks,
                    eval_limit=eval_limit,
                    eval_image_size=eval_image_size,
                )
                _step(registered, image, tracking=True)
                gate = ops["gate_decision"](
                    model_name=model_name,
                    model_version=registered.output,
                    primary_metric=pick.outputs["primary_metric"],
                    rules=promotion,
                )
                _step(gate, image, tracking=True)
                with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
                    promoted = ops["promote_model"](
                        model_name=model_name,
                        model_version=registered.output,
                        primary_metric=pick.outputs["primary_metric"],
                        rules=promotion,
                    )
                    _step(promoted, image, tracking=True)
                    # Only a version that became the champion is deployed (the gate can
                    # pass and the move still be refused: the champion moved meanwhile).
                    with dsl.If(promoted.output == "promoted", name="promoted"):
                        deployed = ops["deploy_model"](
                            model_name=model_name, model_version=registered.output
                        )
                        _step(deployed, image, tracking=True)

            with dsl.Else(name="data-invalid"):
                # No retry: a dataset that failed the gate fails it again.
                stop = ops["stop_on_invalid_data"](summary=check.outputs["summary"])
                _step(stop, image, retry=False)

    return tipsv2


def compile_pipeline(out: str, image: str = DEFAULT_IMAGE) -> str:
    """Compiles the pipeline to KFP IR YAML at `out`; returns the path."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(image), package_path=out)
    return out
