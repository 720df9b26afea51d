"""Live model swap under load: the server follows `champion` in a REAL MLflow registry (the
local stack: `mlflow server` + the S3 gateway on 127.0.0.1) while a bounded client keeps
sending requests. Promote, then roll back: zero failed requests, and the served version
changes both times. Then a version whose export failed its parity check is promoted by
force: the server refuses it, says why, and keeps serving the old one.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from components import stack
from components.promote import promote, rollback
from components.registry import alias_version, register_export
from components.settings import read_env_file
from components.steps.deploy import TAG_SERVED, TAG_TARGET, deploy_model
from components.tracking import client_for
from tests.conftest import logged_in, randomize_
from tests.test_serve import b64, running_server, tensor
from tipsv2_core.export import export_checkpoint
from tipsv2_core.models.io import save_model
from tipsv2_core.models.tips import TIPSModel

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy"),
]
SIZE = 112
MIOU = "eval/zeroshot_seg/synth/miou"
NAME = "serve-swap"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Iterator[Path]:
    """A local stack (MLflow server + S3 gateway) in its own TIPSV2_HOME."""
    home = tmp_path_factory.mktemp("swap_stack")
    stack.up(home)
    try:
        with logged_in(home):  # its MLflow server wants the generated credentials
            yield home
    finally:
        stack.down(home)


@pytest.fixture(scope="module")
def uri(home) -> str:
    return read_env_file(home / "stack" / "stack.env")["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="module")
def versions(tmp_path_factory, uri) -> dict[str, str]:
    """Three registered versions: two good exports of different weights, and a copy of the
    first whose export record says its parity check failed. {label: version}."""
    d = tmp_path_factory.mktemp("swap_exports")
    exports = {}
    for label, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = randomize_(TIPSModel("nano14"), seed=seed).eval()
        ckpt = save_model(model, d / label / "native")
        # The image encoder only: what the load below sends (an export is minutes of
        # CPU on a busy 2-core machine; the text and values graphs would double it).
        exports[label] = export_checkpoint(
            ckpt, d / label / "onnx", image_sizes=(SIZE,), batches=(1, 2),
            graphs=("image_encoder",),
        ).path  # fmt: skip
    bad = d / "bad" / "onnx"
    shutil.copytree(exports["a"], bad)
    meta = json.loads((bad / "export_meta.json").read_text())
    meta["parity"]["passed"] = False
    meta["parity"]["max_abs_diff"] = 0.02
    (bad / "export_meta.json").write_text(json.dumps(meta))
    exports["bad"] = bad
    return {
        label: register_export(path, NAME, {MIOU: 0.5}, tracking_uri=uri).version
        for label, path in exports.items()
    }


class Client:
    """Two threads, each sending one request at a time (bounded load) until stopped;
    records (HTTP status, served version, first value of cls1) per request."""

    def __init__(self, url: str, image: str) -> None:
        self.url = url
        self.body = {"inputs": [tensor("image", "BYTES", [1], [image])]}
        self.results: list[tuple[int, str | None, float | None, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(2)]
        self._lock = threading.Lock()

    def _run(self, thread: int) -> None:
        while not self._stop.is_set():
            try:
                r = requests.post(
                    f"{self.url}/v2/models/image-embedding/infer", json=self.body, timeout=300
                )
                body = r.json()
                row = (
                    r.status_code, body.get("model_version"), body["outputs"][0]["data"][0], thread
                )  # fmt: skip
            except Exception as e:  # a refused connection or a non-JSON body is a failure too
                row = (-1, repr(e), None, thread)
            with self._lock:
                self.results.append(row)

    def __enter__(self) -> Client:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def wait_for_version(self, version: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.results and self.results[-1][1] == version:
                    return
            time.sleep(0.2)
        raise AssertionError(f"version {version} never served; last: {self.results[-3:]}")


def served_versions(results: list[tuple], thread: int) -> list[str | None]:
    """The versions one client thread was served, in order, repeats collapsed. (Per
    thread: each thread sends its next request after the last answer, so its order is
    the server's; two threads' answers may be recorded in either order.)"""
    out: list[str | None] = []
    for _, v, _, t in results:
        if t == thread and (not out or out[-1] != v):
            out.append(v)
    return out


def test_promote_and_rollback_swap_live_without_a_failed_request(
    home, uri, versions, tmp_path, image_png
):
    a, b, bad = versions["a"], versions["b"], versions["bad"]
    promote(NAME, a, force=True, reason="first champion", tracking_uri=uri)
    env_home = os.environ.get("TIPSV2_HOME")
    os.environ["TIPSV2_HOME"] = str(home)  # the server reads the stack's S3 settings there
    try:
        server = running_server(
            f"models:/{NAME}@champion", tmp_path / "server.log", "--tracking-uri", uri,
            "--poll", "0.5", "--image-size", str(SIZE), "--threads", "1", "--timeout", "300",
        )  # fmt: skip
        with server as url, Client(url, image_png) as client:
            client.wait_for_version(a)
            promote(NAME, b, force=True, reason="swap test", tracking_uri=uri)
            client.wait_for_version(b)
            rollback(NAME, a, reason="swap test", tracking_uri=uri)
            client.wait_for_version(a)
            # The DAG's deploy step, locally: records the version the server answers with.
            deployed = deploy_model(NAME, a, tracking_uri=uri, serve_url=url, timeout_s=30)
            with pytest.raises(ValueError, match="is not the champion"):
                deploy_model(NAME, b, tracking_uri=uri, serve_url=url)
            promote(NAME, bad, force=True, reason="a broken export", tracking_uri=uri)
            deadline = time.monotonic() + 120
            while True:
                swap = requests.get(f"{url}/api/status").json()["last_swap"]
                if swap["version"] == bad or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            n_before = len(client.results)
            while len(client.results) < n_before + 4:  # still answering after the refusal
                time.sleep(0.1)
            metrics = requests.get(f"{url}/metrics").text
            status = requests.get(f"{url}/api/status").json()
    finally:
        if env_home is None:
            os.environ.pop("TIPSV2_HOME", None)
        else:
            os.environ["TIPSV2_HOME"] = env_home

    failed = [r for r in client.results if r[0] != 200]
    assert failed == [], f"{len(failed)} of {len(client.results)} requests failed: {failed[:3]}"
    # Every thread went a -> b -> a (a thread may have missed the short b window, never
    # seen b come back after a, or a after the rollback turn into b).
    sequences = [served_versions(client.results, t) for t in (0, 1)]
    assert all(seq in ([a, b, a], [a]) for seq in sequences), sequences
    assert [a, b, a] in sequences
    by_version = {v: x for _, v, x, _ in client.results}
    assert not np.isclose(by_version[a], by_version[b]), "v2 answered with v1's weights"
    assert swap["version"] == bad and swap["ok"] is False
    assert "parity check did not pass" in swap["message"]
    assert status["version"] == a, "the refused version must leave the old one serving"
    assert 'tipsv2_serve_swaps_total{result="ok"} 3.0' in metrics
    assert 'tipsv2_serve_swaps_total{result="refused"} 1.0' in metrics
    assert deployed["served_version"] == a
    tags = client_for(uri).get_model_version(NAME, a).tags
    assert tags[TAG_SERVED] == a and tags[TAG_TARGET] == f"local:{url}"
    assert f'tipsv2_serve_model_info{{name="{NAME}",precision="fp32",version="{a}"}} 1.0' in metrics


@pytest.fixture(scope="module")
def image_png(tmp_path_factory) -> str:
    import io

    from PIL import Image

    rng = np.random.default_rng(5)
    buf = io.BytesIO()
    Image.fromarray((rng.random((100, 120, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return b64(buf.getvalue())


def test_stack_up_serve_starts_the_server_beside_mlflow(home, uri, versions, capsys):
    """`tipsv2 stack up --serve` (its library call) and `tipsv2 stack status`."""
    from components import stack_serve
    from pipelines.cli import main as cli_main

    model = f"models:/{NAME}@champion"
    # A servable champion, whatever the test above left (it ends on the refused version).
    champion = alias_version(client_for(uri), NAME, "champion")
    if champion is None:
        promote(NAME, versions["a"], force=True, reason="stack test", tracking_uri=uri)
    elif champion != versions["a"]:
        rollback(NAME, versions["a"], reason="stack test", tracking_uri=uri)
    try:
        assert stack_serve.up(home, model=model, extra_args=("--image-size", str(SIZE))) == (
            "started"
        )
        assert stack_serve.up(home, model=model) == "already running"
        deadline = time.monotonic() + 180
        while (st := stack_serve.status(home))["version"] is None:
            assert time.monotonic() < deadline, st
            time.sleep(0.5)
        champion = client_for(uri).get_model_version_by_alias(NAME, "champion").version
        assert st["state"] == "running" and st["ready"] and st["version"] == champion
        # It reached the authenticated registry with the credentials of the env file, in
        # its environment; its command line names the tracking URI only.
        password = read_env_file(home / "stack" / "stack.env")["MLFLOW_TRACKING_PASSWORD"]
        pid = int((home / "stack" / "run" / "serve.pid").read_text())
        assert f"--tracking-uri\0{uri}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert (
            f"MLFLOW_TRACKING_PASSWORD={password}".encode()
            in Path(f"/proc/{pid}/environ").read_bytes()
        )
        assert password not in (home / "stack" / "logs" / "serve.log").read_text()
        assert cli_main(["stack", "--home", str(home), "status"]) == 0
        out = capsys.readouterr().out
        assert "serve   running" in out and f"version {champion}" in out
    finally:
        assert stack_serve.down(home) == "stopped"
    assert stack_serve.status(home)["state"] == "stopped"
