"""The serving manifest (infra/k8s/base/serving.yaml) in every overlay: a KServe
InferenceService running this image's server, probed on the v2 health routes, with
resources and autoscaling bounds, and the RBAC the deploy step needs to roll it."""

from __future__ import annotations

import pytest

from components.stack_serve import DEFAULT_MODEL
from components.steps.deploy import ISVC_GROUP, ISVC_PLURAL, ISVC_VERSION
from tests.test_infra import K8S, OVERLAYS, build, by_kind

pytestmark = pytest.mark.unit


@pytest.fixture(params=OVERLAYS, scope="module")
def docs(request) -> list[dict]:
    return build(K8S / "overlays" / request.param)


def test_the_champion_is_served_over_the_v2_protocol(docs):
    (isvc,) = by_kind(docs, "InferenceService").values()
    assert isvc["apiVersion"] == f"{ISVC_GROUP}/{ISVC_VERSION}"
    assert isvc["metadata"]["namespace"] == "tipsv2"
    predictor = isvc["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert "tipsv2:" in container["image"] or "tipsv2@" in container["image"]
    args = container["args"]
    assert args[:3] == ["python", "-m", "components.serving"]
    assert f"--model={DEFAULT_MODEL}" in args and "--host=0.0.0.0" in args
    port = container["ports"][0]["containerPort"]
    assert f"--port={port}" in args
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    # Artifacts come through the MLflow server: no S3 credential in this pod.
    refs = [s for s in container.get("envFrom", []) if "secretRef" in s]
    assert refs == []
    assert {"configMapRef": {"name": "tipsv2-env"}} in container["envFrom"]


def test_the_pipeline_may_roll_the_inference_service(docs):
    role = by_kind(docs, "Role")["tipsv2-pipeline"]
    rules = [r for r in role["rules"] if ISVC_GROUP in r["apiGroups"]]
    assert len(rules) == 1 and rules[0]["resources"] == [ISVC_PLURAL]
    assert set(rules[0]["verbs"]) == {"get", "patch"}
    assert rules[0]["resourceNames"] == list(by_kind(docs, "InferenceService"))
