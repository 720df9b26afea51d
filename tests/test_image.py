"""The platform image, built and run: `infra/docker/Dockerfile` built by `build.sh --local`
(a Debian base made by mmdebstrap, then `buildah build --isolation chroot`: no registry,
no daemon), and the pipeline's steps run inside it.

Inside the image, as its non-root user, with a work directory mounted at /workspace/work:
`tipsv2 data synth`, `data validate`, a few training steps on Ray, `eval` and `export` at
the pipeline's smoke size (the commands the DAG's container components run on Kubernetes),
checked from outside: the manifest, the validation report, the run directory, the metrics,
and the ONNX export re-verified here against the checkpoint trained in there. Then the
compiled KFP pipeline, pointed at the image: every component's command line starts in it,
every component's imports resolve in it, and one component runs through KFP's executor.

Last, the whole DAG at smoke size with every step in its own container of the image:
`tipsv2 run --smoke --containers` through podman's Docker API.

The image is built once per test session and kept, tagged by a hash of everything the
build reads (Dockerfile, build script, lock, sources), so a rerun with the same content
reuses it. Single commands run with `buildah run --isolation chroot` (no OCI runtime);
`podman run` needs runc and limits within the machine's, which the last test sets in a
containers.conf of its own (see infra/docker/README.md). The tests skip, saying why,
where buildah or mmdebstrap (podman or runc for the last) is missing or the user is not
root.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.long]

ROOT = Path(__file__).resolve().parents[1]
# What the image build reads; a change to any of them means a new image.
BUILD_FILES = (
    "infra/docker/Dockerfile",
    "infra/docker/build.sh",
    ".dockerignore",
    "pyproject.toml",
    "requirements-dev.lock",
    "README.md",
)
SOURCES = ("tipsv2_core", "components", "pipelines")
REPOSITORY = "tipsv2"  # build.sh's default IMAGE
TEST_TAG_PREFIX = "test-"
WORK = "/workspace/work"  # the work directory's place inside the container
IMAGE_UID = 10001  # the Dockerfile's USER
# The pipeline's smoke sizes (pipelines/cli/pipeline.py SMOKE).
SMOKE_IMAGES = 120
SMOKE_STEPS = 4
SMOKE_BATCH = 8
SMOKE_SIZE = 112
SMOKE_EVAL_LIMIT = 8


def build_hash() -> str:
    h = hashlib.sha256()
    files = [ROOT / f for f in BUILD_FILES]
    for d in SOURCES:
        files += sorted(
            p for p in (ROOT / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def why_no_build() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "building needs root on Linux (buildah --isolation chroot, mmdebstrap)"
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (Debian: apt-get install buildah mmdebstrap)"
    return None


def buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)


def image_exists(ref: str) -> bool:
    return buildah("inspect", "--type", "image", ref).returncode == 0


def remove_older_test_images(keep: str) -> None:
    """Earlier sessions' test images: the layers they alone hold would pile up on a CI
    machine that keeps its container storage (the shared dependency layers stay)."""
    listed = buildah("images", "--format", "{{.Name}}:{{.Tag}}")
    assert listed.returncode == 0, listed.stderr
    for ref in listed.stdout.split():
        name, _, tag = ref.rpartition(":")
        if name == f"localhost/{REPOSITORY}" and tag.startswith(TEST_TAG_PREFIX) and ref != keep:
            buildah("rmi", ref)


@pytest.fixture(scope="session")
def image() -> str:
    """The cpu image of this checkout's content, built by `build.sh --local` unless an
    earlier session built the same content."""
    reason = why_no_build()
    if reason:
        pytest.skip(f"image not built: {reason}")
    tag = f"{TEST_TAG_PREFIX}{build_hash()}"
    ref = f"localhost/{REPOSITORY}:{tag}-cpu"
    if not image_exists(ref):
        res = subprocess.run(
            ["bash", "infra/docker/build.sh", "--local", "--no-mlflow", "--tag", tag],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "IMAGE": REPOSITORY, "PYTHON": sys.executable},
        )
        assert res.returncode == 0, f"build.sh --local failed:\n{res.stderr[-6000:]}"
        printed = res.stdout.strip().splitlines()[-1]
        assert printed.startswith(f"localhost/{REPOSITORY}:") and image_exists(printed), printed
        assert image_exists(ref), f"{ref} not in local storage after the build"
    remove_older_test_images(keep=ref)
    return ref


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Mounted into every container; owned by the image's user, who writes to it."""
    path = tmp_path_factory.mktemp("image-work")
    os.chown(path, IMAGE_UID, IMAGE_UID)
    return path


def in_image(
    image: str,
    work: Path,
    *cmd: str,
    env: dict[str, str] | None = None,
    user: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """`cmd` in a fresh container of `image` (as on Kubernetes: one per step), with its
    user (unless `user`), working directory and environment, and `work` mounted at
    /workspace/work."""
    created = buildah("from", "--quiet", "--pull=never", image)
    assert created.returncode == 0, created.stderr
    container = created.stdout.strip()
    try:
        args = ["run", "--isolation", "chroot", "--volume", f"{work}:{WORK}"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        if user:
            args += ["--user", user]
        return buildah(*args, container, "--", *cmd, timeout=timeout)
    finally:
        buildah("rm", container)


def check(res: subprocess.CompletedProcess, what: str) -> str:
    output = res.stdout[-3000:] + res.stderr[-3000:]
    assert res.returncode == 0, f"{what} failed in the image (exit {res.returncode}):\n{output}"
    return res.stdout


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary in:\n{stdout[-2000:]}"
    return json.loads(lines[-1])


# ---- the image itself --------------------------------------------------------------------


def test_image_runs_as_its_user_on_its_venv(image, work):
    probe = "id -u; command -v python3; command -v tipsv2; python3 -V"
    out = check(in_image(image, work, "sh", "-c", probe), "id / python3")
    uid, python, tipsv2, _, version = out.split()
    assert uid == str(IMAGE_UID) and version.startswith("3.11.")
    assert python == "/opt/venv/bin/python3" and tipsv2 == "/opt/venv/bin/tipsv2"
    config = json.loads(buildah("inspect", "--type", "image", image).stdout)["OCIv1"]["config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}" and config["WorkingDir"] == "/workspace"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    # Lean: no compiler, no package caches, no build leftovers (looked for as root: the
    # image's user cannot read /root).
    leftovers = "/root/.cache /home/tipsv2/.cache /src /dist /tmp/dist /usr/local/bin/uv /wheels"
    lean = (
        "for c in gcc cc g++ c++ make; do command -v $c; done; "
        f"for p in {leftovers}; do [ -e $p ] && echo $p; done; "
        "find /var/lib/apt/lists /var/cache/apt -type f ! -name lock; true"
    )
    found = check(in_image(image, work, "sh", "-c", lean, user="0:0"), "lean check")
    assert found.split() == [], found


# In the image: sha256 of every .py file of the installed packages, by package path.
INSTALLED_SOURCES = """
import hashlib, json, pathlib, sys
site = pathlib.Path(sys.argv[1]).parent
out = {}
for package in sys.argv[2:]:
    for f in (site / package).rglob("*.py"):
        out[str(f.relative_to(site))] = hashlib.sha256(f.read_bytes()).hexdigest()
print(json.dumps(out))
"""


def test_image_holds_this_checkouts_code(image, work):
    """The installed packages are this checkout's sources, file for file: a stale layer
    (a build cache that missed a change) shows here, not as a puzzling step failure."""
    (work / "installed_sources.py").write_text(INSTALLED_SOURCES)
    probe = "import tipsv2_core, os; print(os.path.dirname(tipsv2_core.__file__))"
    package_dir = check(in_image(image, work, "python3", "-c", probe), "locating the package")
    res = in_image(
        image, work, "python3", f"{WORK}/installed_sources.py", package_dir.strip(), *SOURCES
    )
    installed = json.loads(check(res, "hashing the installed sources"))
    here = {
        str(f.relative_to(ROOT)): hashlib.sha256(f.read_bytes()).hexdigest()
        for d in SOURCES
        for f in (ROOT / d).rglob("*.py")
    }
    assert installed == here


# ---- the pipeline's steps at smoke size ------------------------------------------------


@pytest.fixture(scope="module")
def dataset(image, work) -> Path:
    out = check(
        in_image(
            image, work,
            "tipsv2", "data", "synth", "--num-images", str(SMOKE_IMAGES),
            "--image-size", str(SMOKE_SIZE), "--out", f"{WORK}/synth", "--workers", "1",
            "--no-progress",
        ),
        "tipsv2 data synth",
    )  # fmt: skip
    assert f"{SMOKE_IMAGES} samples" in out
    return work / "synth"


def test_synth_writes_a_complete_dataset(dataset):
    import pandas as pd

    assert (dataset / "COMPLETE").is_file()
    manifest = pd.read_parquet(dataset / "manifest.parquet")
    assert len(manifest) == SMOKE_IMAGES
    assert sorted(p.name for p in (dataset / "shards").glob("*.tar"))
    assert all(p.stat().st_uid == IMAGE_UID for p in dataset.iterdir())  # written as 10001


def test_validate_passes_and_writes_its_report(image, work, dataset):
    out = check(
        in_image(image, work, "tipsv2", "data", "validate", "--data", f"{WORK}/synth"),
        "tipsv2 data validate",
    )
    assert "validation passed" in out
    report = json.loads((dataset / "validation" / "validation.json").read_text())
    assert report["success"] is True
    assert (dataset / "validation" / "validation.html").stat().st_size > 0


@pytest.fixture(scope="module")
def trained(image, work, dataset) -> Path:
    """A few steps of the demo recipe on Ray (one worker), as the DAG's pretrain step."""
    res = in_image(
        image, work,
        "tipsv2", "train", "--recipe", "demo", "--data", f"{WORK}/synth", "--out",
        f"{WORK}/run", "--workers", "1", "--no-track", "--quiet",
        "--set", f"stages.0.steps={SMOKE_STEPS}", "--set", f"stages.0.batch_size={SMOKE_BATCH}",
        "--set", "data.workers=0",
    )  # fmt: skip
    summary = last_json(check(res, "tipsv2 train"))
    assert summary["steps"] == SMOKE_STEPS and summary["resumed_from"] == 0
    assert summary["workers"] == 1 and summary["final"] == f"{WORK}/run/final"
    return work / "run"


def test_training_writes_a_final_checkpoint_and_metrics(trained):
    assert (trained / "final" / "COMPLETE").is_file()
    assert (trained / "final" / "model.safetensors").stat().st_size > 0
    assert (trained / "tokenizer.model").is_file()
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["step"] == SMOKE_STEPS
    losses = [r["train/loss"] for r in records]
    assert all(0.0 < loss < float("inf") for loss in losses), losses  # finite, not NaN


def test_eval_reports_metrics(image, work, trained):
    res = in_image(
        image, work,
        "tipsv2", "eval", "--checkpoint", f"{WORK}/run/final", "--dataset", f"{WORK}/synth",
        "--limit", str(SMOKE_EVAL_LIMIT), "--eval-size", str(SMOKE_SIZE),
        "--image-size", str(SMOKE_SIZE), "--output", f"{WORK}/eval.json", "--quiet",
    )  # fmt: skip
    check(res, "tipsv2 eval")
    metrics = json.loads((work / "eval.json").read_text())
    for task in ("zeroshot_seg", "retrieval", "classification", "knn", "linear_seg"):
        values = [v for k, v in metrics.items() if k.startswith(f"eval/{task}/synth-val/")]
        assert values, f"no {task} metrics in {sorted(metrics)[:10]}"
        assert all(0.0 <= v <= 1.0 for v in values), task


def test_export_in_the_image_matches_the_checkpoint_here(image, work, trained):
    """The ONNX export made in the image, re-verified outside it against PyTorch on the
    checkpoint trained in the image: the two environments agree."""
    from tipsv2_core.export import TOLERANCE, verify_export
    from tipsv2_core.models.io import load_model

    res = in_image(
        image, work,
        "tipsv2", "export", "--checkpoint", f"{WORK}/run/final", "--out", f"{WORK}/onnx",
        "--image-size", str(SMOKE_SIZE),
    )  # fmt: skip
    check(res, "tipsv2 export")
    onnx_dir = work / "onnx"
    assert (onnx_dir / "COMPLETE").is_file()
    for graph in ("image_encoder", "image_values", "text_encoder"):
        assert (onnx_dir / f"{graph}.onnx").stat().st_size > 0, graph
    # Raises ParityError beyond the tolerance.
    report = verify_export(
        onnx_dir, load_model(trained / "final"), image_sizes=[SMOKE_SIZE], batches=(2,)
    )
    assert report.cases and report.max_abs_diff <= TOLERANCE


# ---- the compiled pipeline on the image ------------------------------------------------


def cli_paths() -> list[list[str]]:
    """Every `tipsv2` command and subcommand (from the parser, so none is forgotten)."""
    import argparse

    from pipelines.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
        paths = [prefix]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths += walk(sub, [*prefix, name])
        return paths

    return walk(build_parser(), [])


def test_every_entry_point_starts_in_the_image(image, work):
    """`--help` of every tipsv2 command and of what the steps and KubeRay call beside it:
    KFP's executor, pip (KFP's launcher line), Ray's CLI, DVC and MLflow as modules."""
    commands = [["tipsv2", *path, "--help"] for path in cli_paths()]
    commands += [
        ["python3", "-m", "kfp.dsl.executor_main", "--help"],
        ["python3", "-m", "pip", "--version"],
        ["python3", "-m", "dvc", "--help"],
        ["python3", "-m", "mlflow", "--help"],
        ["ray", "--help"],
        ["tini", "--version"],
        ["wget", "--version"],
    ]
    script = "".join(
        f"{shlex.join(c)} > /dev/null 2>&1 && echo 'ok {shlex.join(c)}' "
        f"|| echo 'FAILED {shlex.join(c)}'\n"
        for c in commands
    )
    (work / "entry_points.sh").write_text(script)
    out = check(in_image(image, work, "sh", f"{WORK}/entry_points.sh"), "the entry points")
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert not failed, failed
    assert out.count("\nok ") + out.startswith("ok ") == len(commands), out


@pytest.fixture(scope="module")
def executors(image, work) -> dict[str, dict]:
    """The container spec of every component of `tipsv2 pipeline compile --image IMAGE`."""
    out = work / "pipeline.yaml"
    res = subprocess.run(
        [str(Path(sys.executable).with_name("tipsv2")), "pipeline", "compile",
         "--image", image, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (spec, *_) = yaml.safe_load_all(out.read_text())
    return {k: v["container"] for k, v in spec["deploymentSpec"]["executors"].items()}


def function_of(container: dict) -> str:
    args = container["args"]
    return args[args.index("--function_to_execute") + 1]


def test_every_component_runs_on_the_image(executors, image):
    from pipelines.dag import COMPONENT_FUNCTIONS

    assert {c["image"] for c in executors.values()} == {image}
    assert {function_of(c) for c in executors.values()} == {f.__name__ for f in COMPONENT_FUNCTIONS}


def test_every_component_command_line_starts_in_the_image(executors, image, work):
    """Each compiled command line as the cluster runs it (KFP's `pip install kfp==…` line
    as the non-root user, then `python3 -m kfp.dsl.executor_main` on the component's
    source), ending in `--help` instead of the executor input."""
    script = "".join(
        f"{shlex.join([*c['command'], '--help'])} > /dev/null && echo 'ok {name}' "
        f"|| echo 'FAILED {name}'\n"
        for name, c in sorted(executors.items())
    )
    (work / "components.sh").write_text(script)
    out = check(in_image(image, work, "sh", f"{WORK}/components.sh"), "the component commands")
    assert sorted(out.split()[1::2]) == sorted(executors), out
    assert "FAILED" not in out, out


# In the image: load each component's source as KFP's executor does, then execute the
# imports in the function's body (they run only when the step runs) and report the names.
RESOLVE_IMPORTS = """
import ast, importlib.util, json, os, sys, tempfile
sources = json.load(open(sys.argv[1]))
names = {}
for key, (function, source) in sorted(sources.items()):
    path = os.path.join(tempfile.mkdtemp(), "ephemeral_component.py")
    open(path, "w").write(source)
    spec = importlib.util.spec_from_file_location("ephemeral_component", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, function)), function
    (body,) = [n for n in ast.parse(source).body if getattr(n, "name", None) == function]
    scope = {}
    for node in ast.walk(body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([node], []), path, "exec"), scope)
    names[key] = sorted(k for k in scope if k != "__builtins__")
print(json.dumps(names))
"""


def test_every_component_resolves_its_imports_in_the_image(executors, image, work):
    sources = {k: [function_of(c), c["command"][-1]] for k, c in executors.items()}
    (work / "sources.json").write_text(json.dumps(sources))
    (work / "resolve_imports.py").write_text(RESOLVE_IMPORTS)
    res = in_image(image, work, "python3", f"{WORK}/resolve_imports.py", f"{WORK}/sources.json")
    names = json.loads(check(res, "importing the components").strip().splitlines()[-1])
    assert set(names) == set(executors)
    # Every step calls into components.steps: its import resolved in the image.
    for key, imported in names.items():
        if function_of(executors[key]) not in ("gate_decision", "stop_on_invalid_data"):
            assert imported, f"{key} imports nothing"


def test_a_component_runs_through_kfps_executor_in_the_image(executors, image, work):
    """The preflight step's compiled command with a real executor input: KFP's executor
    in the image runs the component and writes its output where the launcher reads it."""
    (preflight,) = [c for c in executors.values() if function_of(c) == "preflight"]
    outputs = work / "preflight"
    outputs.mkdir()
    os.chown(outputs, IMAGE_UID, IMAGE_UID)
    executor_input = {
        "inputs": {
            "parameterValues": {
                "recipe": "demo",
                "student_variants": ["nano14"],
                "promotion": {},
                "validation": {},
            }
        },
        "outputs": {
            "parameters": {"Output": {"outputFile": f"{WORK}/preflight/Output"}},
            "outputFile": f"{WORK}/preflight/executor_output.json",
        },
    }
    args = ["--executor_input", json.dumps(executor_input), "--function_to_execute", "preflight"]
    check(in_image(image, work, *preflight["command"], *args), "the preflight component")
    result = json.loads((outputs / "executor_output.json").read_text())
    assert result["parameterValues"]["Output"] == ["nano14"]


# ---- the whole DAG, each step in its own container (kfp.local DockerRunner) --------------


def podman_limits() -> tuple[int, int]:
    """Open files and processes for podman's containers: its defaults exceed what a
    machine without CAP_SYS_RESOURCE may set; at most its hard limits (processes also at
    most kernel.pid_max: more failed with EPERM where measured) go through."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    if nofile == resource.RLIM_INFINITY:
        nofile = 1 << 20
    return nofile, pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)


@pytest.fixture(scope="module")
def docker_host(image, tmp_path_factory) -> Iterator[str]:
    """podman's Docker-compatible API on a socket of this test's own, with a
    containers.conf that makes `podman run` work here: Debian's runc (crun rejects the
    hybrid cgroup hierarchy) and limits within the machine's (infra/docker/README.md)."""
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install podman runc)")
    folder = tmp_path_factory.mktemp("podman")
    nofile, nproc = podman_limits()
    conf = folder / "containers.conf"
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    socket = folder / "podman.sock"
    with open(folder / "service.log", "w") as log:
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{socket}"],
            env={**os.environ, "CONTAINERS_CONF": str(conf)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not socket.exists():
            assert service.poll() is None, (folder / "service.log").read_text()
            assert time.monotonic() < deadline, "podman's API socket did not appear in 60 s"
            time.sleep(0.2)
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(timeout=60)


def test_tipsv2_run_smoke_in_containers(image, docker_host, tmp_path):
    """`tipsv2 run --smoke --containers`: every step in a container of the image, through
    podman's Docker API. The summary holds what the subprocess run's does (the e2e test of
    tests/test_pipeline.py), and MLflow's runs name the image the steps ran in."""
    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env |= {"TIPSV2_HOME": str(tmp_path), "TIPSV2_STACK": "off", "DOCKER_HOST": docker_host}
    tipsv2 = str(Path(sys.executable).with_name("tipsv2"))
    res = subprocess.run(
        [tipsv2, "run", "--smoke", "--containers", "--image", image, "--json", "--quiet"],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    s = last_json(res.stdout)
    assert s["status"] == "SUCCEEDED" and s["error"] is None
    statuses = {step["step"]: step["status"] for step in s["steps"]}
    assert statuses.pop("data-invalid", "skipped") == "skipped"
    # 16 steps: the 15 of the DAG that run, and deploy-model after the promotion.
    assert set(statuses.values()) == {"SUCCESS"} and len(statuses) == 16, statuses
    assert s["data"]["num_samples"] == SMOKE_IMAGES and s["data"]["passed"] is True
    assert [x["variant"] for x in s["students"]] == ["nano14"]
    miou = [k for k in s["teacher"]["metrics"] if k.endswith("/miou") and "zeroshot" in k]
    assert miou and miou[0] in s["students"][0]["metrics"]
    assert s["promotion"]["action"] == "promoted" and s["registered_version"] == "1"
    assert s["parity_max_abs_diff"] < 1e-3
    assert list(Path(s["onnx_model"]).glob("*.onnx"))
    # The steps' MLflow runs (in the shared home's SQLite file) record the image.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    tagged = {r.data.tags["step"]: r.data.tags.get("image") for r in runs if "step" in r.data.tags}
    for step in ("pretrain", "distill/nano14", "evaluate/teacher", "evaluate/student"):
        assert tagged.get(step) == image, (step, tagged)
