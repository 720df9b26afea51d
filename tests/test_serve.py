"""The model server through real HTTP: a `python -m components.serving` process started by
the test on 127.0.0.1, serving a real ONNX export of the randomised nano model.

Checks the Open Inference Protocol (KServe v2) REST routes one by one, that the served
outputs equal `tipsv2 embed` / `tipsv2 segment` on the same inputs, every kind of bad
input (a 4xx naming the problem, and the server keeps serving), dynamic batching,
back-pressure (503 + Retry-After) and the metrics.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from pipelines.cli import main as cli_main
from tipsv2_core.eval.visualize import segment_image
from tipsv2_core.export import export_checkpoint, load_onnx_model
from tipsv2_core.models.io import save_model
from tipsv2_core.serving.servable import load_servable
from tipsv2_core.text import Tokenizer, train_tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SIZE = 112  # image side the server resizes to (and the export was checked at)
TOL = 1e-4
MODELS = ("image-embedding", "text-embedding", "segmentation")
MAX_PIXELS = 200 * 200
MAX_BODY_MB = 2


# ---------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def exported(tmp_path_factory, nano, caption_corpus) -> tuple[Path, Path]:
    """(native checkpoint with its tokenizer, its ONNX export with fp32 + int8 graphs)."""
    d = tmp_path_factory.mktemp("serve_export")
    ckpt = save_model(nano, d / "native")
    tok = train_tokenizer(caption_corpus, ckpt / "tokenizer.model", vocab_size=60)
    export_checkpoint(
        ckpt, d / "onnx", image_sizes=(SIZE,), batches=(1, 2), tokenizer=tok, int8=True
    )
    return ckpt, d / "onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model: str, log: Path, *extra: str, timeout: float = 180.0) -> Iterator[str]:
    """A server process on a free port; yields its base URL once /v2/health/ready is 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "components.serving", "--model", model, "--port", str(port),
           *extra]  # fmt: skip
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"server exited: {log.read_text()[-2000:]}"
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not ready: {log.read_text()[-2000:]}"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve_log") / "server.log"


@pytest.fixture(scope="module")
def url(exported, server_log) -> Iterator[str]:
    extra = ["--image-size", str(SIZE), "--max-wait-ms", "40", "--max-queue", "8",
             "--max-pixels", str(MAX_PIXELS), "--max-body-mb", str(MAX_BODY_MB),
             "--max-classes", "5", "--max-items", "8", "--threads", "1"]  # fmt: skip
    with running_server(str(exported[1]), server_log, *extra) as u:
        yield u


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("serve_images")
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate([(90, 130), (112, 112), (150, 100)]):
        p = d / f"img{i}.png"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def b64(path: Path | bytes) -> str:
    data = path if isinstance(path, bytes) else path.read_bytes()
    return base64.b64encode(data).decode()


def tensor(name: str, datatype: str, shape: list[int], data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def infer(url: str, model: str, inputs: list[dict], **extra) -> requests.Response:
    return requests.post(
        f"{url}/v2/models/{model}/infer", json={"inputs": inputs, **extra}, timeout=120
    )


def outputs(resp: requests.Response) -> dict[str, np.ndarray]:
    assert resp.status_code == 200, resp.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in resp.json()["outputs"]}


def cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(list(argv))
    return rc, out.getvalue() + err.getvalue()


# ---------------------------------------------------------------------------------------
# protocol conformance


def test_server_metadata_live_and_ready(url):
    meta = requests.get(f"{url}/v2").json()
    assert meta["name"] == "tipsv2" and meta["version"] and meta["extensions"] == []
    live = requests.get(f"{url}/v2/health/live")
    ready = requests.get(f"{url}/v2/health/ready")
    assert (live.status_code, ready.status_code) == (200, 200)


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_and_ready(url, model):
    meta = requests.get(f"{url}/v2/models/{model}").json()
    assert meta["name"] == model and meta["versions"] == ["local"]
    assert meta["platform"] == "onnxruntime_onnx"
    for t in meta["inputs"] + meta["outputs"]:
        assert set(t) == {"name", "datatype", "shape"}
    assert requests.get(f"{url}/v2/models/{model}/versions/local").json() == meta
    assert requests.get(f"{url}/v2/models/{model}/ready").status_code == 200
    assert requests.get(f"{url}/v2/models/{model}/versions/local/ready").status_code == 200
    assert requests.get(f"{url}/v2/models/{model}/versions/7/ready").status_code == 400


def test_image_metadata_declares_the_tensors(url):
    meta = requests.get(f"{url}/v2/models/image-embedding").json()
    assert meta["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, -1, -1]},
    ]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("cls1", "FP32", [-1, 96]),
        ("cls2", "FP32", [-1, 96]),
        ("patch_tokens", "FP32", [-1, -1, -1, 96]),
    ]


def test_unknown_model_version_and_route_are_404_with_an_error_body(url):
    r = requests.get(f"{url}/v2/models/nope")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = infer(url, "nope", [tensor("text", "BYTES", [1], ["x"])])
    assert r.status_code == 404 and "unknown model" in r.json()["error"]
    r = requests.post(f"{url}/v2/models/text-embedding/versions/9/infer", json={})
    assert r.status_code == 404 and "version '9' is not served" in r.json()["error"]
    r = requests.get(f"{url}/v3/whatever")
    assert r.status_code == 404 and "no route" in r.json()["error"]
    r = requests.get(f"{url}/v2/models/text-embedding/infer")
    assert r.status_code == 405 and "GET is not allowed" in r.json()["error"]


def test_infer_echoes_the_id_and_names_model_and_version(url, images):
    r = requests.post(
        f"{url}/v2/models/image-embedding/versions/local/infer",
        json={"id": "req-1", "inputs": [tensor("image", "BYTES", [1], [b64(images[0])])]},
    )
    body = r.json()
    assert r.status_code == 200
    assert (body["id"], body["model_name"], body["model_version"]) == (
        "req-1", "image-embedding", "local",
    )  # fmt: skip
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("cls1", "FP32", [1, 96]),
        ("cls2", "FP32", [1, 96]),
    ]


# ---------------------------------------------------------------------------------------
# served outputs = the CLI's


def test_image_embeddings_equal_tipsv2_embed(url, exported, images, tmp_path):
    onnx = exported[1]
    paths = [str(p) for p in images]
    out = tmp_path / "emb.npz"
    rc, msg = cli("embed", "image", "--checkpoint", str(onnx), "--image-size", str(SIZE),
                  "--patch-tokens", "--output", str(out), *paths)  # fmt: skip
    assert rc == 0, msg
    ref = np.load(out)
    got = outputs(
        infer(url, "image-embedding", [tensor("image", "BYTES", [3], [b64(p) for p in images])],
              outputs=[{"name": "cls1"}, {"name": "cls2"}, {"name": "patch_tokens"}])
    )  # fmt: skip
    assert got["patch_tokens"].shape == (3, SIZE // 14, SIZE // 14, 96)
    for k in ("cls1", "cls2", "patch_tokens"):
        np.testing.assert_allclose(got[k], ref[k], atol=TOL, rtol=0)
    # The same images as FP32 pixels (prepared client-side) give the same embeddings.
    from tipsv2_core.inference import load_image

    pixels = load_image(paths[0], SIZE).numpy()[None]  # ~0.75 MB of JSON numbers
    got_px = outputs(
        infer(url, "image-embedding", [tensor("pixels", "FP32", list(pixels.shape),
                                              pixels.ravel().tolist())])
    )  # fmt: skip
    np.testing.assert_allclose(got_px["cls1"], ref["cls1"][:1], atol=TOL, rtol=0)
    # And the JSON route.
    r = requests.post(f"{url}/api/embed/image", json={"images": [b64(p) for p in images]})
    assert r.status_code == 200 and r.json()["model_version"] == "local"
    np.testing.assert_allclose(np.asarray(r.json()["cls2"]), ref["cls2"], atol=TOL, rtol=0)


def test_text_embeddings_equal_tipsv2_embed(url, exported, tmp_path):
    onnx = exported[1]
    texts = ["A red STAR near a tree.", "a blue circle", "Ünïcode and emoji 🙂"]
    out = tmp_path / "t.npz"
    rc, msg = cli("embed", "text", "--checkpoint", str(onnx), "--tokenizer",
                  str(onnx / "tokenizer.model"), "--output", str(out), *texts)  # fmt: skip
    assert rc == 0, msg
    ref = np.load(out)["text"]
    got = outputs(infer(url, "text-embedding", [tensor("text", "BYTES", [3], texts)]))
    np.testing.assert_allclose(got["embedding"], ref, atol=TOL, rtol=0)
    r = requests.post(f"{url}/api/embed/text", json={"texts": texts})
    np.testing.assert_allclose(np.asarray(r.json()["embedding"]), ref, atol=TOL, rtol=0)


def test_segmentation_equals_tipsv2_segment(url, exported, images, tmp_path):
    onnx = exported[1]
    classes = ["red", "tree", "star"]
    out = str(tmp_path / "o.png")
    rc, msg = cli("segment", str(images[2]), "--checkpoint", str(onnx), "--classes",
                  ",".join(classes), "--eval-size", str(SIZE), "--out", out)  # fmt: skip
    assert rc == 0, msg
    share_cli = json.loads(msg.strip().splitlines()[-1])["pixel_share"]
    model = load_onnx_model(onnx)
    with Image.open(images[2]) as img:
        ref = segment_image(model, Tokenizer(onnx / "tokenizer.model"), img.convert("RGB"),
                            classes, eval_size=SIZE)  # fmt: skip
    got = outputs(
        infer(url, "segmentation", [tensor("image", "BYTES", [1], [b64(images[2])]),
                                    tensor("classes", "BYTES", [3], classes)],
              parameters={"eval_size": SIZE})
    )  # fmt: skip
    assert got["labels"].shape == (150, 100)
    np.testing.assert_array_equal(got["labels"], ref)
    assert [round(float(s), 4) for s in got["pixel_share"]] == [share_cli[c] for c in classes]
    r = requests.post(
        f"{url}/api/segment",
        json={"image": b64(images[2]), "classes": classes, "eval_size": SIZE},
    )
    np.testing.assert_array_equal(np.asarray(r.json()["labels"]), ref)


# ---------------------------------------------------------------------------------------
# bad inputs: a 4xx naming the problem, and the server keeps serving


def _png(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def _nested(depth: int) -> list:
    x: list = [1.0]
    for _ in range(depth):
        x = [x]
    return x


IMG = "image-embedding"
TXT = "text-embedding"
SEG = "segmentation"
GOOD_SEG = [tensor("classes", "BYTES", [2], ["a", "b"])]
SMALL = [tensor("image", "BYTES", [1], [b64(_png(20, 20))])]
LARGE = [tensor("image", "BYTES", [1], [b64(_png(300, 200))])]
BAD_INPUTS = [
    # (id, model, request body, status, words the error must contain)
    ("not-an-object", TXT, [1, 2], 400, "must be a JSON object"),
    ("no-inputs", TXT, {"inputs": []}, 400, "'inputs' must be a non-empty list"),
    ("wrong-input-name", TXT, {"inputs": [tensor("txt", "BYTES", [1], ["a"])]}, 400,
     "has no input(s) ['txt']"),
    ("wrong-datatype", TXT, {"inputs": [tensor("text", "INT32", [1], [3])]}, 400,
     "datatype INT32, expected BYTES"),
    ("unknown-datatype", TXT, {"inputs": [tensor("text", "STRING", [1], ["a"])]}, 400,
     "unknown datatype 'STRING'"),
    ("wrong-shape", IMG, {"inputs": [tensor("pixels", "FP32", [1, 4, 14, 14], [0.0] * 784)]},
     400, "shape [1, 4, 14, 14], expected [-1, 3, -1, -1]"),
    ("shape-data-mismatch", IMG, {"inputs": [tensor("pixels", "FP32", [1, 3, 14, 14], [0.0] * 5)]},
     400, "needs 588 elements, data has 5"),
    ("non-numeric-data", IMG, {"inputs": [tensor("pixels", "FP32", [1, 3, 1, 1], ["a", 1, 2])]},
     400, "FP32 elements must be numbers"),
    ("not-multiple-of-patch", IMG,
     {"inputs": [tensor("pixels", "FP32", [1, 3, 20, 20], [0.0] * 1200)]}, 400,
     "height 20: must be a multiple of 14"),
    ("negative-shape", TXT, {"inputs": [tensor("text", "BYTES", [-1], [])]}, 400,
     "shape must be a list"),
    ("deep-nesting", IMG, {"inputs": [tensor("pixels", "FP32", [1], _nested(50))]}, 400,
     "nested deeper than 8"),
    ("duplicate-input", TXT, {"inputs": [tensor("text", "BYTES", [1], ["a"])] * 2}, 400,
     "given twice"),
    ("unknown-output", TXT, {"inputs": [tensor("text", "BYTES", [1], ["a"])],
                             "outputs": [{"name": "logits"}]}, 400, "unknown output(s) ['logits']"),
    ("not-base64", IMG, {"inputs": [tensor("image", "BYTES", [1], ["@@not base64@@"])]}, 400,
     "image[0]: not valid base64"),
    ("undecodable-image", IMG, {"inputs": [tensor("image", "BYTES", [1], [b64(b"GIF89a-junk")])]},
     400, "image[0]: cannot decode the image"),
    ("image-over-pixel-limit", IMG, {"inputs": LARGE},
     413, f"200x300 = 60000 pixels, over the limit of {MAX_PIXELS}"),
    ("image-size-too-big", IMG, {"inputs": SMALL,
                                 "parameters": {"image_size": 2800}}, 400,
     "image_size 2800: must be a multiple of 14 between 14 and 896"),
    ("too-many-images", IMG, {"inputs": [tensor("image", "BYTES", [9], [b64(_png(20, 20))] * 9)]},
     413, "9 images, over the limit of 8"),
    ("text-too-long", TXT, {"inputs": [tensor("text", "BYTES", [1], ["x" * 1001])]}, 413,
     "1001 characters, over the limit of 1000"),
    ("too-many-classes", SEG, {"inputs": [tensor("image", "BYTES", [1], [b64(_png(20, 20))]),
                                          tensor("classes", "BYTES", [6], list("abcdef"))]},
     413, "6 class names, over the limit of 5"),
    ("empty-class-name", SEG, {"inputs": [tensor("image", "BYTES", [1], [b64(_png(20, 20))]),
                                          tensor("classes", "BYTES", [2], ["a", " "])]},
     400, "class names must not be empty"),
    ("missing-image", SEG, {"inputs": GOOD_SEG}, 400, "missing input(s) ['image']"),
    ("bad-mode", SEG, {"inputs": [*SMALL, *GOOD_SEG],
                       "parameters": {"mode": "tiles"}}, 400, "parameter 'mode': 'tiles'"),
    ("bad-eval-size", SEG, {"inputs": [*SMALL, *GOOD_SEG],
                            "parameters": {"eval_size": "big"}}, 400,
     "parameter 'eval_size' must be an integer"),
    ("file-path-is-not-read", IMG, {"inputs": [tensor("image", "BYTES", [1], ["/etc/passwd"])]},
     400, "image[0]: cannot decode the image"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "body", "status", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
def test_bad_input_is_a_4xx_naming_the_problem(url, model, body, status, words):
    r = requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_bad_bodies(url):
    r = requests.post(f"{url}/v2/models/text-embedding/infer", data=b"{nope")
    assert r.status_code == 400 and "body is not JSON" in r.json()["error"]
    r = requests.post(f"{url}/v2/models/text-embedding/infer", data=b"")
    assert r.status_code == 400 and "empty body" in r.json()["error"]
    big = b"x" * (MAX_BODY_MB * 2**20 + 1)
    r = requests.post(f"{url}/v2/models/text-embedding/infer", data=big)
    assert r.status_code == 413 and "over the limit of 2097152" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(MAX_BODY_MB * 16 + 1):
            yield b"y" * 65536

    r = requests.post(f"{url}/v2/models/text-embedding/infer", data=chunks())
    assert r.status_code == 413 and "body is over the limit" in r.json()["error"]
    r = requests.post(f"{url}/api/embed/text", json={"texts": "one string"})
    assert r.status_code == 400 and "'texts' must be a list of strings" in r.json()["error"]
    r = requests.post(f"{url}/api/segment", json={"image": 3, "classes": ["a"]})
    assert r.status_code == 400 and "'image' must be a base64 string" in r.json()["error"]


def test_the_server_keeps_serving_after_bad_inputs(url):
    for _, model, body, *_ in BAD_INPUTS:
        requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
    assert requests.get(f"{url}/v2/health/live").status_code == 200
    got = outputs(infer(url, "text-embedding", [tensor("text", "BYTES", [1], ["still here"])]))
    assert got["embedding"].shape == (1, 96)


# ---------------------------------------------------------------------------------------
# batching, back-pressure, metrics, logs


def metric(url: str, series: str, /, **labels: str) -> float:
    """The value of one sample in /metrics (0.0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in requests.get(f"{url}/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        lname, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if lname == series and got == want:
            return float(value)
    return 0.0


def test_concurrent_requests_are_batched(url, images):
    calls_before = metric(url, "tipsv2_serve_batch_size_count", model=IMG)
    rows_before = metric(url, "tipsv2_serve_batch_size_sum", model=IMG)
    body = [tensor("image", "BYTES", [1], [b64(images[1])])]
    with ThreadPoolExecutor(8) as pool:
        codes = [r.status_code for r in pool.map(lambda _: infer(url, IMG, body), range(8))]
    assert codes == [200] * 8
    calls = metric(url, "tipsv2_serve_batch_size_count", model=IMG) - calls_before
    rows = metric(url, "tipsv2_serve_batch_size_sum", model=IMG) - rows_before
    assert rows == 8
    assert calls < 8, f"8 concurrent requests ran in {calls} model calls: no batching"


def test_a_full_queue_answers_503_with_retry_after(url):
    # 4 images resized to 448 px each: slow enough that 24 concurrent requests overflow
    # the 8 rows the queue holds.
    image = tensor("image", "BYTES", [4], [b64(_png(40, 40))] * 4)
    body = json.dumps({"inputs": [image], "parameters": {"image_size": 448}})

    def post(_):
        return requests.post(f"{url}/v2/models/{IMG}/infer", data=body, timeout=120)

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(post, range(24)))
    codes = sorted({r.status_code for r in responses})
    assert codes == [200, 503], codes
    full = [r for r in responses if r.status_code == 503]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in full)
    assert "is busy" in full[0].json()["error"]
    assert requests.get(f"{url}/v2/health/ready").status_code == 200


def test_metrics_and_request_logs(url, server_log):
    secret = "a caption nobody should log 8d1f"
    assert infer(url, TXT, [tensor("text", "INT32", [1], [1])]).status_code == 400
    assert infer(url, TXT, [tensor("text", "BYTES", [1], [secret])]).status_code == 200
    assert metric(url, "tipsv2_serve_requests_total", model=TXT, route="infer", status="200") >= 1
    assert metric(url, "tipsv2_serve_requests_total", model=TXT, route="infer", status="400") >= 1
    assert metric(url, "tipsv2_serve_request_seconds_count", model=TXT, route="infer",
                  status="200") >= 1  # fmt: skip
    assert metric(url, "tipsv2_serve_model_info", name="tipsv2", version="local",
                  precision="fp32") == 1.0  # fmt: skip
    text = requests.get(f"{url}/metrics").text
    assert 'tipsv2_serve_queue_depth{model="image-embedding"}' in text
    assert "tipsv2_serve_batch_size_bucket" in text
    time.sleep(0.5)
    lines = [json.loads(x) for x in server_log.read_text().splitlines() if x.startswith("{")]
    requests_logged = [x for x in lines if x.get("event") == "request"]
    assert requests_logged and {"request_id", "model", "status", "ms", "version"} <= set(
        requests_logged[-1]
    )
    assert secret not in server_log.read_text()


# ---------------------------------------------------------------------------------------
# what is served from a path


def test_int8_is_served_only_within_the_tolerance(exported):
    onnx = exported[1]
    meta = json.loads((onnx / "export_meta.json").read_text())
    measured = meta["precision_parity"]["int8"]["max_abs_diff"]
    assert load_servable(onnx).precision == "fp32"
    assert load_servable(onnx, int8_tolerance=measured * 2).precision == "int8"
    assert load_servable(onnx, int8_tolerance=measured / 2).precision == "fp32"


def test_a_native_checkpoint_is_served_with_pytorch(exported, images):
    ckpt, onnx = exported
    native, exp = load_servable(ckpt), load_servable(onnx)
    assert native.precision == "torch" and native.has_text
    from tipsv2_core.inference import load_image

    pixels = load_image(images[0], SIZE).numpy()[None]
    a, b = native.embed_images(pixels, False), exp.embed_images(pixels, False)
    np.testing.assert_allclose(a["cls1"], b["cls1"], atol=TOL, rtol=0)


def test_an_export_whose_parity_failed_is_refused(exported, tmp_path):
    import shutil

    from tipsv2_core.errors import CheckpointError

    bad = tmp_path / "onnx"
    shutil.copytree(exported[1], bad)
    meta = json.loads((bad / "export_meta.json").read_text())
    meta["parity"]["passed"] = False
    (bad / "export_meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="parity check did not pass"):
        load_servable(bad)
