"""`tipsv2 pipeline submit` up to the wire, against a recording KFP v2beta1 REST server.

There is no Kubeflow here. `RecordingKfpApi` is a small stdlib HTTP server on 127.0.0.1
that answers the v2beta1 REST calls kfp.Client makes, in the JSON shapes of
kfp_server_api's models, and records every request. It runs nothing and checks nothing:
the tests read what our command sent (the compiled spec, typed parameters, the schedule,
the experiment, no credentials) and what it made of the answers.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from pipelines.cli import main
from pipelines.cli.pipeline import cron_expression

API = "/apis/v2beta1"
IMAGE = "registry.example/tipsv2@sha256:" + "cd" * 32
PARAMS = [
    "synth_images=64",  # int
    'validation={"min_samples": 10, "max_aspect_ratio": 4.5}',  # dict with a float
    "student_variants=nano14,small14",  # list, comma form
    'eval_tasks=["retrieval"]',  # list, JSON form
    "train_cpu=4",  # a string parameter stays a string
    "recipe=demo",
]
TYPED = {
    "synth_images": 64,
    "validation": {"min_samples": 10, "max_aspect_ratio": 4.5},
    "student_variants": ["nano14", "small14"],
    "eval_tasks": ["retrieval"],
    "train_cpu": "4",
    "recipe": "demo",
}
pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA-test-not-a-key-7f3a",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value-9c2e51",
    "MLFLOW_TRACKING_USERNAME": "mlflow-user-44d1",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-password-b80f",
}


class RecordingKfpApi(ThreadingHTTPServer):
    """A recording server that speaks the KFP v2beta1 REST shape. Not a Kubeflow.

    Answers what kfp.Client calls for a run or a recurring run: GET healthz, GET
    experiments (by the display_name in `filter`), POST experiments, POST runs, POST
    recurringruns; a created object is the request body plus an id, a state and a time,
    in snake_case JSON as the API server's grpc-gateway writes it. Anything else is 404,
    errors are {"error", "code", "message"}. `fail` maps "METHOD /path" (path after
    /apis/v2beta1) to an HTTP status to answer instead. Every request lands in `requests`
    as {method, path, query, headers, raw, body, reply: (status, JSON answered)}.
    """

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_port}"
        self.requests: list[dict[str, Any]] = []
        self.experiments: dict[str, dict[str, Any]] = {}  # by display name
        self.fail: dict[str, int] = {}

    def calls(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if (r["method"], r["path"]) == (method, API + path)]


class _Handler(BaseHTTPRequestHandler):
    server: RecordingKfpApi

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.server.requests[-1]["reply"] = (status, doc)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = json.loads(raw) if raw else None
        srv = self.server
        headers = dict(self.headers)
        rec = {"method": self.command, "path": url.path, "query": query, "headers": headers}
        srv.requests.append(rec | {"raw": raw, "body": body})
        key = f"{self.command} {url.path.removeprefix(API)}"
        new_id, now = str(uuid.uuid4()), "2025-01-01T03:00:00Z"
        if key in srv.fail:
            self._reply(srv.fail[key], {"error": "boom", "code": 13, "message": f"{key}: boom"})
        elif key == "GET /healthz":
            self._reply(200, {"multi_user": False})
        elif key == "GET /experiments":
            preds = json.loads(query.get("filter") or "{}").get("predicates", [])
            names = {p["stringValue"] for p in preds if p["key"] == "display_name"}
            found = [e for n, e in srv.experiments.items() if not names or n in names]
            self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
        elif key == "POST /experiments":
            exp = body | {"experiment_id": new_id, "created_at": now, "storage_state": "AVAILABLE"}
            srv.experiments[exp["display_name"]] = exp
            self._reply(200, exp)
        elif key == "POST /runs":
            self._reply(200, body | {"run_id": new_id, "created_at": now, "state": "PENDING"})
        elif key == "POST /recurringruns":
            rec = {"recurring_run_id": new_id, "created_at": now, "status": "ENABLED"}
            self._reply(200, body | rec)
        else:
            self._reply(404, {"error": "Not Found", "code": 5, "message": "Not Found"})

    do_POST = do_GET


@pytest.fixture
def kfp_api(monkeypatch, tmp_path) -> Iterator[RecordingKfpApi]:
    import kfp

    # No user context (~/.config/kfp), KF_PIPELINES_* overrides or proxy in the way.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for var in [v for v in os.environ if v.startswith("KF_PIPELINES_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server = RecordingKfpApi()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _submit(capsys, server: RecordingKfpApi, *extra: str) -> tuple[int, dict | None, str]:
    args = ["pipeline", "submit", "--host", server.url, "--image", IMAGE]
    for p in PARAMS:
        args += ["--param", p]
    rc = main([*args, *extra])
    out, err = capsys.readouterr()
    # stdout is one JSON line; kfp.Client's "... details: <link>" lines go to stderr.
    return rc, json.loads(out) if rc == 0 else None, err


def _compiled(capsys, tmp_path: Path) -> tuple[dict, dict]:
    out = tmp_path / "compiled.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--image", IMAGE]) == 0
    capsys.readouterr()
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform


def _images(spec: dict) -> set[str]:
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


def test_submit_sends_the_compiled_pipeline_as_a_run(kfp_api, capsys, tmp_path):
    rc, doc, err = _submit(capsys, kfp_api, "--experiment", "nightly", "--run-name", "r-42")
    assert rc == 0, err
    # The named experiment is looked up by name, not there, so created.
    [lookup] = kfp_api.calls("GET", "/experiments")
    [pred] = json.loads(lookup["query"]["filter"])["predicates"]
    assert (pred["key"], pred["stringValue"]) == ("display_name", "nightly")
    [created] = kfp_api.calls("POST", "/experiments")
    assert created["body"]["display_name"] == "nightly"
    exp_id = kfp_api.experiments["nightly"]["experiment_id"]

    [run] = kfp_api.calls("POST", "/runs")
    body = run["body"]
    assert body["display_name"] == "r-42"
    assert body["experiment_id"] == exp_id
    # Training goes to infra/k8s's RayCluster unless told otherwise.
    cluster = {"ray_address": "http://tipsv2-ray-head-svc:8265"}
    assert body["runtime_config"]["parameters"] == TYPED | cluster
    # The spec travels inline (no pipeline upload), exactly as `pipeline compile` writes it.
    assert not kfp_api.calls("POST", "/pipelines/upload")
    spec, platform = _compiled(capsys, tmp_path)
    sent = body["pipeline_spec"]
    assert set(sent["pipeline_spec"]["components"]) == set(spec["components"])
    assert set(sent["pipeline_spec"]["root"]["dag"]["tasks"]) == set(spec["root"]["dag"]["tasks"])
    assert _images(sent["pipeline_spec"]) == _images(spec) == {IMAGE}
    assert sent == {"pipeline_spec": spec, "platform_spec": platform}

    # The command prints the id the server gave the run.
    assert run["reply"][0] == 200
    run_id = run["reply"][1]["run_id"]
    assert doc == {"run_id": run_id, "host": kfp_api.url, "experiment": "nightly", "name": "r-42"}
    paths = [(r["method"], r["path"].removeprefix(API)) for r in kfp_api.requests]
    assert paths == [
        ("GET", "/healthz"),  # our reachability check
        ("GET", "/healthz"),  # kfp.Client: multi-user or not
        ("GET", "/experiments"),
        ("POST", "/experiments"),
        ("POST", "/runs"),
    ]


def test_submit_with_a_schedule_creates_a_recurring_run_in_the_experiment(kfp_api, capsys):
    # An experiment that exists is looked up (in the namespace), not created again.
    team = {"experiment_id": str(uuid.uuid4()), "display_name": "nightly", "namespace": "team-a"}
    kfp_api.experiments["nightly"] = team
    extra = ["--experiment", "nightly", "--namespace", "team-a", "--run-name", "every-night"]
    extra += ["--ray-address", ""]  # Ray inside each training step's pod
    rc, doc, err = _submit(capsys, kfp_api, *extra, "--schedule", "0 3 * * *")
    assert rc == 0, err
    assert not kfp_api.calls("POST", "/experiments") and not kfp_api.calls("POST", "/runs")
    [lookup] = kfp_api.calls("GET", "/experiments")
    assert lookup["query"]["namespace"] == "team-a"

    [rec] = kfp_api.calls("POST", "/recurringruns")
    body = rec["body"]
    # kfp wants 6 fields, seconds first (robfig/cron); the 5-field cron gains "0" seconds.
    assert cron_expression("0 3 * * *") == "0 0 3 * * *"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert body["experiment_id"] == team["experiment_id"]
    assert body["display_name"] == "every-night"
    assert body["mode"] == "ENABLE" and body["max_concurrency"] == 1
    assert body["runtime_config"]["parameters"] == TYPED | {"ray_address": ""}
    assert _images(body["pipeline_spec"]["pipeline_spec"]) == {IMAGE}
    assert doc == {
        "recurring_run_id": rec["reply"][1]["recurring_run_id"],
        "cron": "0 0 3 * * *",
        "host": kfp_api.url,
        "experiment": "nightly",
        "name": "every-night",
    }


def test_no_credentials_leave_the_machine(kfp_api, capsys, monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    assert _submit(capsys, kfp_api)[0] == 0
    assert _submit(capsys, kfp_api, "--schedule", "*/15 * * * *")[0] == 0
    assert kfp_api.calls("POST", "/runs") and kfp_api.calls("POST", "/recurringruns")
    for r in kfp_api.requests:
        wire = json.dumps([r["path"], r["query"], r["headers"], r["raw"]])
        for key, value in SECRETS.items():
            assert value not in wire, f"{key}'s value sent in {r['method']} {r['path']}"
        assert not {"authorization", "cookie"} & {h.lower() for h in r["headers"]}
    # The steps get them from Kubernetes Secrets, named (not valued) in the platform spec.
    platform = kfp_api.calls("POST", "/runs")[0]["body"]["pipeline_spec"]["platform_spec"]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    refs = {
        (s["secretName"], k["envVar"])
        for e in executors.values()
        for s in e.get("secretAsEnv", [])
        for k in s["keyToEnv"]
    }
    assert {(n, k) for n, k in refs if k in SECRETS} == {
        ("tipsv2-s3", "AWS_ACCESS_KEY_ID"),
        ("tipsv2-s3", "AWS_SECRET_ACCESS_KEY"),
        ("tipsv2-mlflow", "MLFLOW_TRACKING_USERNAME"),
        ("tipsv2-mlflow", "MLFLOW_TRACKING_PASSWORD"),
    }


@pytest.mark.parametrize(
    ("endpoint", "extra"),
    [("POST /runs", []), ("POST /recurringruns", ["--schedule", "0 3 * * *"])],
)
def test_a_server_error_fails_with_the_host_and_the_status(kfp_api, capsys, endpoint, extra):
    kfp_api.fail[endpoint] = 500
    rc, _, err = _submit(capsys, kfp_api, *extra)
    assert rc == 2
    assert f"Kubeflow Pipelines at {kfp_api.url} answered 500 Internal Server Error" in err
    assert f"{endpoint}: boom" in err  # the server's message
    assert "Traceback" not in err and "HTTP response headers" not in err
    assert len(kfp_api.calls(*endpoint.split())) == 1  # no retries of a create
