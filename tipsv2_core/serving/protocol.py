"""Tensors of the Open Inference Protocol (KServe v2) REST API, JSON encoding.

A request tensor is `{"name", "shape", "datatype", "data", "parameters"?}`: `data` holds
the elements in row-major order, flat or nested; BYTES elements are strings. Every way a
client can get this wrong raises `ProtocolError` with an HTTP status and a one-line
message that names the tensor and the problem, so the server can answer with the
protocol's error body `{"error": message}`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The protocol's datatypes -> numpy. BYTES tensors are kept as Python lists of str.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
BYTES = "BYTES"
DATATYPES = (*DTYPES, BYTES)
MAX_RANK = 8  # deeper `data` nesting or shapes are refused before any allocation


class ProtocolError(ValueError):
    """A request the protocol or the model refuses: `status` (4xx/5xx) and the message."""

    def __init__(self, message: str, status: int = 400, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class TensorSpec:
    """A model's input or output as its metadata declares it; -1 is a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class Tensor:
    """A decoded request tensor: `data` is an ndarray of `shape`, or a list of str (BYTES)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[str]
    parameters: dict[str, Any]


def _flatten(data: Any, name: str) -> list[Any]:
    """Row-major elements of a flat or nested JSON list (nesting at most MAX_RANK deep)."""
    out: list[Any] = []
    stack: list[tuple[Any, int]] = [(data, 0)]
    # An explicit stack (not recursion): a hostile body nested thousands deep is refused
    # by the depth check instead of exhausting Python's recursion limit.
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= MAX_RANK:
                raise ProtocolError(f"input {name!r}: data is nested deeper than {MAX_RANK}")
            stack.extend((x, depth + 1) for x in reversed(item))
        else:
            out.append(item)
    return out


def _shape(value: Any, name: str) -> tuple[int, ...]:
    ok = (
        isinstance(value, list)
        and len(value) <= MAX_RANK
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    )
    if not ok:
        raise ProtocolError(
            f"input {name!r}: shape must be a list of at most {MAX_RANK} non-negative "
            f"integers, got {value!r}"[:300]
        )
    return tuple(value)


def decode_tensor(doc: Any) -> Tensor:
    """One request input `{"name", "shape", "datatype", "data"}` -> Tensor."""
    if not isinstance(doc, dict):
        raise ProtocolError("each input must be an object with name, shape, datatype and data")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError("an input has no 'name'")
    missing = [k for k in ("shape", "datatype", "data") if k not in doc]
    if missing:
        raise ProtocolError(f"input {name!r}: missing {', '.join(missing)}")
    shape = _shape(doc["shape"], name)
    datatype = doc["datatype"]
    if datatype not in DATATYPES:
        raise ProtocolError(
            f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        )
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"input {name!r}: parameters must be an object")
    flat = _flatten(doc["data"], name)
    count = math.prod(shape)
    if len(flat) != count:
        raise ProtocolError(
            f"input {name!r}: shape {list(shape)} needs {count} elements, data has {len(flat)}"
        )
    if datatype == BYTES:
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {name!r}: BYTES elements must be strings")
        return Tensor(name, datatype, shape, flat, params)
    return Tensor(name, datatype, shape, _numeric(flat, datatype, name).reshape(shape), params)


def _numeric(flat: list[Any], datatype: str, name: str) -> np.ndarray:
    if datatype == "BOOL":
        if not all(isinstance(x, bool) for x in flat):
            raise ProtocolError(f"input {name!r}: BOOL elements must be true or false")
        return np.asarray(flat, dtype=np.bool_)
    floating = datatype.startswith("FP")
    good = (int, float) if floating else (int,)
    if not all(isinstance(x, good) and not isinstance(x, bool) for x in flat):
        kind = "numbers" if floating else "integers"
        raise ProtocolError(f"input {name!r}: {datatype} elements must be {kind}")
    dtype = DTYPES[datatype]
    if not floating:
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise ProtocolError(f"input {name!r}: a value is out of the {datatype} range")
    arr = np.asarray(flat, dtype=dtype)
    if floating and not np.isfinite(arr).all():
        raise ProtocolError(f"input {name!r}: values must be finite")
    return arr


def check_input(tensor: Tensor, spec: TensorSpec) -> None:
    """The tensor's datatype and shape fit `spec` (-1 matches any size), else ProtocolError."""
    if tensor.datatype != spec.datatype:
        raise ProtocolError(
            f"input {spec.name!r}: datatype {tensor.datatype}, expected {spec.datatype}"
        )
    fits = len(tensor.shape) == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
    )
    if not fits:
        raise ProtocolError(
            f"input {spec.name!r}: shape {list(tensor.shape)}, expected {list(spec.shape)} "
            "(-1 = any size)"
        )


def encode_tensor(name: str, value: np.ndarray | Sequence[str]) -> dict[str, Any]:
    """An output tensor: ndarray -> its datatype, shape and flat data; a list of str -> BYTES."""
    if isinstance(value, np.ndarray):
        for datatype, dtype in DTYPES.items():
            if value.dtype == dtype:
                return {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(value.shape),
                    "data": value.ravel().tolist(),
                }
        raise TypeError(f"output {name!r}: no protocol datatype for {value.dtype}")
    return {"name": name, "datatype": BYTES, "shape": [len(value)], "data": list(value)}


@dataclass
class InferRequest:
    """A decoded `POST .../infer` body: inputs by name, requested outputs, id, parameters."""

    id: str | None
    inputs: dict[str, Tensor]
    outputs: list[str] | None
    parameters: dict[str, Any]


def decode_request(doc: Any) -> InferRequest:
    """The body of an inference request (already parsed JSON) -> InferRequest."""
    if not isinstance(doc, dict):
        raise ProtocolError("the request body must be a JSON object")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError("'id' must be a string")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, Tensor] = {}
    for raw in raw_inputs:
        t = decode_tensor(raw)
        if t.name in inputs:
            raise ProtocolError(f"input {t.name!r} is given twice")
        inputs[t.name] = t
    outputs = None
    if "outputs" in doc:
        raw_outputs = doc["outputs"]
        ok = isinstance(raw_outputs, list) and all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        )
        if not ok:
            raise ProtocolError("'outputs' must be a list of objects with a 'name'")
        outputs = [o["name"] for o in raw_outputs]
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    return InferRequest(rid, inputs, outputs, params)
