"""Serving throughput and latency: `tipsv2 serve` with dynamic batching on vs off, and
`mlflow models serve` of the same registered model, at several client concurrencies.

One export of a randomised model (image encoder only), three servers on 127.0.0.1:
  batching   tipsv2 serve --max-batch 32 --max-wait-ms 5   (PNG bytes in, v2 protocol)
  no-batch   tipsv2 serve --max-batch 1                     (the same server, one per call)
  mlflow     mlflow models serve of the registered ONNX flavour (pixels as JSON tensors:
             it cannot decode images), with --mlflow
At each concurrency (closed loop: C client threads, each sending its next request when
the last one is answered) the contenders run one after the other, in turns, and the table
gives requests/s, p50 and p99 latency, and the ratios to batching.

    .venv/bin/python bench/serve.py [--tiny] [--mlflow] [--concurrency 1,8,32]

Figures need a quiet machine (the load average is printed before and after); `--tiny`
(nano14 at 112 px, a few requests) only checks that the script runs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import write_results
from tests.conftest import randomize_
from tipsv2_core.export import export_model
from tipsv2_core.models.tips import TIPSModel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], ready_path: str, port: int, env: dict | None = None) -> Iterator[str]:
    """A server started in its own process group (`mlflow models serve` runs uvicorn in a
    child), ready on `ready_path`; the whole group is stopped afterwards. Its output is
    kept in a temporary file and shown if it fails to start."""
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}:\n{tail}")
                with contextlib.suppress(requests.ConnectionError):
                    if requests.get(url + ready_path, timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[:4]} not ready after 300 s")
                time.sleep(0.3)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def load(send: Callable[[], requests.Response], concurrency: int, n: int) -> dict[str, float]:
    """n requests from `concurrency` closed-loop clients: throughput and latency quantiles."""
    latencies: list[float] = []

    def one(_: int) -> None:
        t0 = time.perf_counter()
        r = send()
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"rps": n / wall, "p50_s": q[49], "p99_s": q[98]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="nano14 at 112 px, few requests")
    ap.add_argument("--variant", default="ti14")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=200, help="per contender and level")
    ap.add_argument("--mlflow", action="store_true", help="also mlflow models serve")
    args = ap.parse_args()
    variant, size, n = (
        ("nano14", 112, 16) if args.tiny else (args.variant, args.size, args.requests)
    )
    levels = [int(c) for c in args.concurrency.split(",")]
    # A SIGTERM (e.g. from `timeout`) unwinds the servers' contexts: no server outlives us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"load average before: {os.getloadavg()}")
    torch.manual_seed(0)
    model = randomize_(TIPSModel(variant, pos_grid=32), scale=0.02).eval()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "onnx"
        export_model(model, export, image_sizes=(size,), graphs=("image_encoder",), batches=(1,))
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
        png = base64.b64encode(buf.getvalue()).decode()
        v2_body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [png]}]}
        pixels = (np.asarray(Image.open(buf), np.float32) / 255).transpose(2, 0, 1)[None]
        mlflow_body = {"inputs": {"images": pixels.tolist()}}

        base = [sys.executable, "-m", "components.serving", "--model", str(export),
                "--image-size", str(size), "--max-queue", "4096", "--timeout", "600"]  # fmt: skip
        contenders: dict[str, tuple[list[str], str, int, dict, str]] = {}
        for name, extra in (("batching", ["--max-batch", "32", "--max-wait-ms", "5"]),
                            ("no-batch", ["--max-batch", "1"])):  # fmt: skip
            port = free_port()
            contenders[name] = ([*base, *extra, "--port", str(port)], "/v2/health/ready", port,
                                v2_body, "/v2/models/image-embedding/infer")  # fmt: skip
        env = None
        if args.mlflow:
            from components.registry import register_export

            uri = f"sqlite:///{tmp}/mlflow.db"
            version = register_export(export, "bench-serve", {}, tracking_uri=uri).version
            port = free_port()
            # `mlflow models serve` starts `uvicorn` by name: the venv's bin must be on PATH.
            path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
            env = os.environ | {"MLFLOW_TRACKING_URI": uri, "PATH": path}
            cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m",
                   f"models:/bench-serve/{version}", "--env-manager", "local",
                   "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
            contenders["mlflow"] = (cmd, "/ping", port, mlflow_body, "/invocations")
        with contextlib.ExitStack() as stack:
            urls = {
                name: stack.enter_context(server(cmd, ready, port, env))
                for name, (cmd, ready, port, _, _) in contenders.items()
            }
            for c in levels:
                for name, (_, _, _, body, path) in contenders.items():
                    url = urls[name] + path

                    def send(url=url, body=body) -> requests.Response:
                        return requests.post(url, json=body, timeout=600)

                    load(send, c, max(c, 4))  # warm-up
                    res = load(send, c, n)
                    rows.append({"contender": name, "concurrency": c, **res})
    print(f"load average after: {os.getloadavg()}")
    print(f"{variant} at {size} px, {n} requests per contender and level")
    print(f"{'contender':<10}{'conc':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'×batching':>11}")
    for r in rows:
        ref = next(
            x for x in rows if x["contender"] == "batching" and x["concurrency"] == r["concurrency"]
        )
        r["throughput_vs_batching"] = r["rps"] / ref["rps"]
        print(f"{r['contender']:<10}{r['concurrency']:>6}{r['rps']:>10.1f}"
              f"{r['p50_s'] * 1000:>10.1f}{r['p99_s'] * 1000:>10.1f}"
              f"{r['throughput_vs_batching']:>11.2f}")  # fmt: skip
    path = write_results("serve" + ("_tiny" if args.tiny else ""), rows,
                         {"variant": variant, "size": size, "requests": n})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
