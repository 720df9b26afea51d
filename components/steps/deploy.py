"""The deploy step, after a promotion: the champion goes behind the serving endpoint.

The server follows `models:/NAME@champion` by itself (components.serving), so deploying
is (1) on a Kubernetes cluster, touching the serving resource so that KServe rolls out a
new revision that loads the new champion (`infra/k8s/base/serving`), and (2) everywhere,
recording what is served: a deployment record in the registry (tags on the version)
and, locally, the version the local stack's server answers with once it has swapped.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

from components.registry import CHAMPION

TAG_DEPLOYED_AT = "deploy.timestamp"
TAG_TARGET = "deploy.target"
TAG_SERVED = "deploy.served_version"
ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
ISVC_NAME_ENV = "TIPSV2_INFERENCE_SERVICE"  # the InferenceService to roll (default: tipsv2)
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
ANNOTATION = "tipsv2.io/champion-version"


def in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ and os.path.isfile(NAMESPACE_FILE)


def roll_inference_service(name: str, version: str) -> str:
    """Annotates the InferenceService's predictor with the new champion version: a change
    of the pod template, so KServe starts a new revision, waits for its readiness probe
    (the v2 ready route) and only then moves traffic. Returns the resource's name."""
    from kubernetes import client, config

    config.load_incluster_config()
    with open(NAMESPACE_FILE) as f:
        namespace = f.read().strip()
    isvc = os.environ.get(ISVC_NAME_ENV, "tipsv2")
    patch = {
        "spec": {
            "predictor": {"annotations": {ANNOTATION: version, "tipsv2.io/registered-model": name}}
        }
    }
    client.CustomObjectsApi().patch_namespaced_custom_object(
        ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, isvc, patch
    )
    return f"{namespace}/{isvc}"


def local_served_version(url: str, want: str, timeout_s: float) -> str | None:
    """The version the local server at `url` serves, waiting up to `timeout_s` for `want`."""
    deadline = time.monotonic() + timeout_s
    served = None
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=5) as r:
                served = json.load(r).get("version")
        except OSError:
            return None
        if served == want or time.monotonic() >= deadline:
            return served
        time.sleep(0.5)


def deploy_model(
    name: str,
    version: str,
    *,
    tracking_uri: str | None = None,
    serve_url: str | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Deploys `version` of `name`, which must be the champion now (the step runs only
    after a promotion). serve_url: a running server to confirm (default: the local
    stack's, when it runs one). Records target and served version on the version's tags."""
    from components.registry import alias_version
    from components.settings import configure
    from components.tracking import client_for

    if tracking_uri is None:
        configure()
    client = client_for(tracking_uri)
    champion = alias_version(client, name, CHAMPION)
    if champion != str(version):
        raise ValueError(
            f"{name} v{version} is not the champion (champion: v{champion}); nothing to deploy"
        )
    if in_cluster():
        target = f"kserve:{roll_inference_service(name, str(version))}"
        served = None  # KServe moves traffic once the new revision is ready
    else:
        url = serve_url or _local_server_url()
        target = f"local:{url}" if url else "local:none"
        served = local_served_version(url, str(version), timeout_s) if url else None
    tags = {
        TAG_TARGET: target,
        TAG_DEPLOYED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        TAG_SERVED: served or "pending",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return {"name": name, "version": str(version), "target": target, "served_version": served}


def _local_server_url() -> str | None:
    """The local stack's server, when `tipsv2 stack up --serve` started one."""
    from components import stack_serve

    return stack_serve.url()
