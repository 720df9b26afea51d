"""The server's web page, used as a person would: a real server (`python -m
components.serving --index …`) and a real headless Chromium (Debian's `chromium`) driven
over the DevTools protocol — type a text and search, choose an image file and class names
and segment — then the screenshot checked to show content. Also the page's routes through
plain HTTP (results equal `tipsv2 search`'s, unknown and path-like keys refused).
Skipped, saying so, where Chromium is not installed."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.test_reports_browser import CHROMIUM, assert_not_blank
from tests.test_serve import running_server
from tipsv2_core.eval.visualize import overlay

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SIZE = 112
CLASSES = ["circle", "star", "background"]


@pytest.fixture(scope="module")
def index(tmp_path_factory, nano, caption_corpus) -> Path:
    """A synthetic dataset embedded (in-process; Ray's path is test_embed_dataset's) by the
    ONNX export the server serves, with the alt-texts."""
    from components.embed_dataset import embed_dataset
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset
    from tipsv2_core.export import export_checkpoint
    from tipsv2_core.models.io import save_model
    from tipsv2_core.text import train_tokenizer

    d = tmp_path_factory.mktemp("web")
    data = write_synthetic_dataset(d / "synth", 24, image_size=SIZE, shard_size=12, progress=False)
    ckpt = save_model(nano, d / "native")
    tok = train_tokenizer(caption_corpus, ckpt / "tokenizer.model", vocab_size=60)
    export_checkpoint(ckpt, d / "onnx", image_sizes=(SIZE,), batches=(1,), tokenizer=tok)
    embed_dataset(str(d / "onnx"), str(data), d / "emb", caption="alt_text", workers=0,
                  progress=False)  # fmt: skip
    return d / "emb"


@pytest.fixture(scope="module")
def url(index, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("web_log") / "server.log"
    model = str(index.parent / "onnx")
    with running_server(model, log, "--index", str(index), "--image-size", str(SIZE),
                        "--threads", "1") as u:  # fmt: skip
        yield u


@pytest.fixture(scope="module")
def picture(index) -> Path:
    """One of the dataset's images as a file to hand the page."""
    from tipsv2_core.data.shards import iter_samples

    sample = next(iter_samples(index.parent / "synth"))
    path = index.parent / "picture.png"
    sample.image.save(path)
    return path


# ---------------------------------------------------------------------------------------
# the routes over HTTP


def test_page_is_served_self_contained(url):
    r = requests.get(url + "/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "__PALETTE__" not in html and 'id="palette"' in html
    for outside in ("http://", "https://", "//cdn", "<link "):  # air-gapped: nothing fetched
        assert outside not in html.replace(url, "")


def test_search_route_equals_tipsv2_search(url, index):
    from components.search import search

    r = requests.post(url + "/api/search", json={"text": "a red star", "k": 5}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    want = search(index, text="a red star", k=5)
    assert [h["key"] for h in got] == [h.key for h in want]
    np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-5)
    img = requests.get(url + got[0]["image"], timeout=30)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(img.content)).size == (SIZE, SIZE)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"text": ""}, 400, "non-empty"),
        ({"text": "a star", "k": 0}, 400, "'k' must be"),
        ({"text": "a star", "extra": 1}, 400, "send"),
        ({"text": "x" * 1001}, 413, "over the limit"),
    ],
)
def test_bad_searches_are_4xx_naming_the_problem(url, body, status, words):
    r = requests.post(url + "/api/search", json=body, timeout=30)
    assert r.status_code == status and words in r.json()["error"]


def test_search_refuses_a_model_other_than_the_one_that_embedded_the_index(index, tmp_path):
    """What a live swap leaves: the served model is no longer the index's. Its queries
    would land in another vector space, so search answers 409 naming both."""
    import copy
    import shutil

    from tests.conftest import randomize_
    from tipsv2_core.models.io import load_model, save_model

    other = randomize_(copy.deepcopy(load_model(index.parent / "native")), seed=1)
    ckpt = save_model(other, tmp_path / "other")
    shutil.copy(index.parent / "native" / "tokenizer.model", ckpt / "tokenizer.model")
    with running_server(str(ckpt), tmp_path / "server.log", "--index", str(index),
                        "--image-size", str(SIZE), "--threads", "1") as u:  # fmt: skip
        r = requests.post(u + "/api/search", json={"text": "a red star"}, timeout=60)
        assert r.status_code == 409, r.text
        assert "not the model that embedded the index" in r.json()["error"]
        assert requests.get(u + "/v2/health/ready", timeout=30).status_code == 200


def test_only_indexed_keys_are_served(url):
    for key in ("nope", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        r = requests.get(f"{url}/api/images/{key}", timeout=30)
        assert r.status_code == 404, key
    assert requests.get(url + "/v2/health/live", timeout=30).status_code == 200


# ---------------------------------------------------------------------------------------
# the page in a real browser


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=120, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg["error"]
                return msg["result"]

    def eval(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)  # fmt: skip
        assert "exceptionDetails" not in res, res["exceptionDetails"]
        return res["result"].get("value")

    def wait(self, expression: str, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.2)


@contextlib.contextmanager
def browser(tmp: Path) -> Iterator[DevTools]:
    profile = tmp / "profile"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1280,1000",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
        page = next(p for p in pages if p["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium)")
def test_search_and_segment_through_the_page(url, picture, tmp_path):
    with browser(tmp_path) as page:
        page.call("Page.enable")
        page.call("Page.navigate", url=url + "/")
        # The button starts disabled and is enabled by the status the page fetches.
        page.wait("document.readyState === 'complete' && !$('search-btn').disabled")
        assert "24 images indexed" in page.eval("$('status').textContent")

        # Search: type a text, press the button, wait for the result cards and their images.
        page.eval("$('query').value = 'a red star'; $('search-btn').click(); true")
        page.wait("$('results').dataset.done === '12' && [...document.querySelectorAll("
                  "'#results img')].every(i => i.complete && i.naturalWidth > 0)")  # fmt: skip
        shown = page.eval("[...document.querySelectorAll('#results .key')].map(e => e.textContent)")
        want = requests.post(url + "/api/search", json={"text": "a red star", "k": 12}, timeout=60)
        assert shown == [h["key"] for h in want.json()["results"]]

        # Segment: choose the file as the file chooser would, give class names, press.
        doc = page.call("DOM.getDocument")
        node = page.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
        page.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(picture)])
        page.wait(f"$('source').width === {SIZE}")
        page.eval(f"$('classes').value = {', '.join(CLASSES)!r}; $('segment-btn').click(); true")
        page.wait(f"$('legend').dataset.done === '{len(CLASSES)}'")
        legend = page.eval(
            "[...document.querySelectorAll('#legend .name')].map(e => e.textContent)"
        )
        assert legend == CLASSES
        drawn = np.asarray(page.eval(
            "Array.from($('overlay').getContext('2d').getImageData(0, 0, "
            f"{SIZE}, {SIZE}).data)"), np.uint8).reshape(SIZE, SIZE, 4)[..., :3]  # fmt: skip

        shot = page.call("Page.captureScreenshot", format="png")
        out = tmp_path / "page.png"
        out.write_bytes(base64.b64decode(shot["data"]))

    # The overlay on the page is the reports' overlay of the server's label map.
    body = {"image": base64.b64encode(picture.read_bytes()).decode(), "classes": CLASSES}
    labels = np.asarray(
        requests.post(url + "/api/segment", json=body, timeout=120).json()["labels"]
    )
    want = np.asarray(overlay(Image.open(picture), labels, len(CLASSES)))
    assert np.abs(drawn.astype(int) - want.astype(int)).max() <= 1
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape[1] == 1280
    assert_not_blank(pixels)
