"""The serving library without HTTP: the protocol's tensors, client images, dynamic
batching and the model slot's swap and drain."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from components.serving.slot import ModelSlot
from tipsv2_core.serving.batching import Batcher, QueueFull
from tipsv2_core.serving.images import decode_base64, decode_image
from tipsv2_core.serving.protocol import (
    ProtocolError,
    TensorSpec,
    check_input,
    decode_request,
    decode_tensor,
    encode_tensor,
)
from tipsv2_core.serving.servable import Servable

pytestmark = pytest.mark.unit


def test_tensors_decode_flat_or_nested_in_row_major_order():
    flat = decode_tensor(
        {"name": "x", "shape": [2, 3], "datatype": "INT32", "data": list(range(6))}
    )
    nested = decode_tensor(
        {"name": "x", "shape": [2, 3], "datatype": "INT32", "data": [[0, 1, 2], [3, 4, 5]]}
    )
    assert flat.data.dtype == np.int32 and flat.data.shape == (2, 3)
    np.testing.assert_array_equal(flat.data, nested.data)
    np.testing.assert_array_equal(flat.data[1], [3, 4, 5])


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [("BOOL", np.bool_), ("UINT8", np.uint8), ("INT64", np.int64), ("FP16", np.float16),
     ("FP32", np.float32), ("FP64", np.float64)],
)  # fmt: skip
def test_every_numeric_datatype_round_trips(datatype, dtype):
    values = [True, False] if datatype == "BOOL" else [1, 2]
    t = decode_tensor({"name": "x", "shape": [2], "datatype": datatype, "data": values})
    assert t.data.dtype == dtype
    out = encode_tensor("y", t.data)
    assert (out["datatype"], out["shape"], out["data"]) == (datatype, [2], values)


def test_bytes_tensors_are_lists_of_strings():
    t = decode_tensor({"name": "t", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]})
    assert t.data == ["a", "b"]
    assert encode_tensor("t", ["x"]) == {
        "name": "t",
        "datatype": "BYTES",
        "shape": [1],
        "data": ["x"],
    }


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}, "out of the UINT8 range"),
        ({"name": "x", "shape": [1], "datatype": "FP32", "data": [True]}, "must be numbers"),
        ({"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}, "true or false"),
        ({"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}, "must be strings"),
        ({"name": "x", "shape": [1], "datatype": "FP32"}, "missing data"),
        ({"shape": [1], "datatype": "FP32", "data": [1]}, "has no 'name'"),
        ({"name": "x", "shape": [1, 1, 1, 1, 1, 1, 1, 1, 1], "datatype": "FP32", "data": [1]},
         "at most 8"),
    ],
)  # fmt: skip
def test_bad_tensors_name_the_problem(doc, words):
    with pytest.raises(ProtocolError, match=words) as e:
        decode_tensor(doc)
    assert e.value.status == 400


def test_non_finite_floats_are_refused():
    with pytest.raises(ProtocolError, match="must be finite"):
        decode_tensor({"name": "x", "shape": [1], "datatype": "FP64", "data": [float("nan")]})


def test_specs_match_variable_dimensions():
    spec = TensorSpec("pixels", "FP32", (-1, 3, -1, -1))
    good = decode_tensor({"name": "pixels", "shape": [1, 3, 1, 2], "datatype": "FP32",
                          "data": [0.0] * 6})  # fmt: skip
    check_input(good, spec)
    bad = decode_tensor({"name": "pixels", "shape": [3, 1, 2], "datatype": "FP32",
                         "data": [0.0] * 6})  # fmt: skip
    with pytest.raises(ProtocolError, match=r"shape \[3, 1, 2\], expected \[-1, 3, -1, -1\]"):
        check_input(bad, spec)


def test_requests_keep_id_outputs_and_parameters():
    req = decode_request(
        {"id": "7", "inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
         "outputs": [{"name": "embedding"}], "parameters": {"k": 1}}
    )  # fmt: skip
    assert (req.id, req.outputs, req.parameters, list(req.inputs)) == (
        "7", ["embedding"], {"k": 1}, ["t"],
    )  # fmt: skip


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_images_decode_from_bytes_within_the_pixel_limit():
    assert decode_image(_png(30, 20), "img", max_pixels=600).size == (30, 20)
    with pytest.raises(ProtocolError, match="30x20 = 600 pixels, over the limit of 599") as e:
        decode_image(_png(30, 20), "img", max_pixels=599)
    assert e.value.status == 413
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"  # would start Ghostscript
    with pytest.raises(ProtocolError, match="cannot decode the image"):
        decode_image(eps, "img", max_pixels=10**6)
    with pytest.raises(ProtocolError, match="not valid base64"):
        decode_base64("!!", "img")


# ---------------------------------------------------------------------------------------
# dynamic batching


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_items_of_one_key_share_a_call():
    calls: list[list[int]] = []

    def run_batch(payloads):
        calls.append(list(payloads))
        return [p * 10 for p in payloads]

    async def main():
        b = Batcher("m", run_batch, executor=ThreadPoolExecutor(1), max_batch=4, max_wait_s=0.2)
        b.start()
        results = await asyncio.gather(*(b.submit(i, 1, "k", 5.0) for i in range(6)))
        other = await b.submit(99, 1, "other-key", 5.0)
        await b.stop()
        return results, other

    results, other = _run(main())
    assert results == [0, 10, 20, 30, 40, 50] and other == 990
    assert [len(c) for c in calls] == [4, 2, 1]  # max_batch rows, then the rest, then alone


def test_a_full_queue_refuses_at_once_and_a_slow_one_times_out():
    gate = threading.Event()

    def run_batch(payloads):
        gate.wait(5)
        return list(payloads)

    async def main():
        b = Batcher("m", run_batch, executor=ThreadPoolExecutor(1), max_batch=1, max_wait_s=0,
                    max_queue=2)  # fmt: skip
        b.start()
        first = asyncio.ensure_future(b.submit(0, 1, "k", 10.0))  # runs, blocked on gate
        await asyncio.sleep(0.2)
        queued = [asyncio.ensure_future(b.submit(i, 1, "k", 10.0)) for i in (1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="2 rows queued") as e:
            await b.submit(3, 1, "k", 10.0)
        assert e.value.retry_after >= 1
        with pytest.raises(TimeoutError):
            await b.submit(4, 0, "k", 0.1)  # waits behind the others, gives up
        gate.set()
        out = await asyncio.gather(first, *queued)
        await b.stop()
        return out

    assert _run(main()) == [0, 1, 2]


def test_a_failing_batch_fails_its_callers_only():
    def run_batch(payloads):
        if "bad" in payloads:
            raise RuntimeError("model failed")
        return payloads

    async def main():
        b = Batcher("m", run_batch, executor=ThreadPoolExecutor(1), max_batch=1, max_wait_s=0)
        b.start()
        with pytest.raises(RuntimeError, match="model failed"):
            await b.submit("bad", 1, "k", 5.0)
        ok = await b.submit("good", 1, "k", 5.0)
        await b.stop()
        return ok

    assert _run(main()) == "good"


# ---------------------------------------------------------------------------------------
# the model slot


def _servable(version: str) -> Servable:
    return Servable(model=None, tokenizer=None, version=version, source=version, precision="fp32")


def test_swap_waits_for_the_old_models_batches_to_finish():
    slot = ModelSlot()
    slot.swap(_servable("1"))
    started, release = threading.Event(), threading.Event()
    seen = []

    def batch():
        with slot.lease() as s:
            started.set()
            release.wait(5)
            seen.append(s.version)

    t = threading.Thread(target=batch)
    t.start()
    started.wait(5)
    t0 = time.monotonic()
    threading.Timer(0.3, release.set).start()
    old = slot.swap(_servable("2"))
    assert time.monotonic() - t0 >= 0.25, "the swap returned before the old batch drained"
    t.join()
    assert old.version == "1" and seen == ["1"] and slot.current.version == "2"
    with slot.lease() as s:
        assert s.version == "2"
    slot.refuse("3", "v3: broken")
    assert (slot.last_swap.version, slot.last_swap.ok) == ("3", False)
    assert slot.current.version == "2"
