"""Reduced-precision copies of an exported fp32 graph: fp16 weights and int8 dynamic quantisation.

Both keep float32 inputs and outputs, so every runtime wrapper and CLI command feeds
them exactly as it feeds the fp32 graph. Their accuracy is measured against fp32
PyTorch and reported, not held to the fp32 tolerance.

- fp16: `onnxruntime.transformers.float16.convert_float_to_float16` (onnxconverter-common
  is not a dependency; this converter ships with onnxruntime) with `keep_io_types=True`:
  weights and activations in float16, casts at the inputs and outputs. Ops it blocks
  by default (Resize among them) stay in float32 behind casts. ONNX Runtime's CPU
  provider runs few float16 kernels, so on CPU this halves the file, not the latency.
- int8: `onnxruntime.quantization.quantize_dynamic`, signed 8-bit weights (QInt8, ORT's
  recommended weight type for dynamic quantisation) for every MatMul with a constant
  weight; activations are quantised per call (DynamicQuantizeLinear). The patch-embedding
  Conv and the token-embedding Gather stay in float32 (ConvInteger has no fast CPU kernel).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import onnx

from tipsv2_core.export.onnx_export import data_file
from tipsv2_core.export.protos import strip_unused_opsets, toposort

PRECISIONS = ("fp32", "fp16", "int8")


def model_file(graph: str, precision: str) -> str:
    """`image_encoder.onnx`, `image_encoder.fp16.onnx`, `image_encoder.int8.onnx`, …"""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


def _save(model: onnx.ModelProto, path: Path, external_data: bool) -> None:
    onnx.save(
        model,
        str(path),
        save_as_external_data=external_data,
        all_tensors_to_one_file=True,
        location=data_file(path),
    )


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike, external_data: bool = False) -> Path:
    """Writes a float16 copy of the fp32 model `src` to `dst` (float32 I/O kept)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    dst = Path(dst)
    # The converter needs every value's type (to keep blocked ops such as Range in fp32).
    # Its own shape inference works on the in-memory proto, which cannot exceed 2 GiB;
    # inferring from the file works at any size.
    typed = dst.with_name(dst.name + ".shapes.onnx")
    try:
        onnx.shape_inference.infer_shapes_path(str(src), str(typed))
        model = onnx.load(str(typed))  # external data is found beside it, as for src
    finally:
        typed.unlink(missing_ok=True)
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    toposort(half.graph)  # the converter appends its input casts after their consumers
    strip_unused_opsets(half)
    _save(half, dst, external_data)
    onnx.checker.check_model(str(dst))
    return dst


@contextlib.contextmanager
def _no_preprocess_hint() -> Iterator[None]:
    """quantize_dynamic logs a hint on the root logger ("consider to run pre-processing")
    on every call; the basic-optimised graph it gets here has the weights it needs folded
    already (see onnx_export)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def to_int8(src: str | os.PathLike, dst: str | os.PathLike, external_data: bool = False) -> Path:
    """Writes a dynamically quantised (int8 MatMul weights) copy of `src` to `dst`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    with _no_preprocess_hint():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            use_external_data_format=external_data,
            extra_options={"MatMulConstBOnly": True},  # activations × activations stay fp32
        )
    onnx.checker.check_model(str(dst))
    return dst


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, precision: str, external_data: bool = False
) -> Path:
    """fp16 or int8 copy of the fp32 model `src`."""
    if precision == "fp16":
        return to_fp16(src, dst, external_data)
    if precision == "int8":
        return to_int8(src, dst, external_data)
    raise ValueError(f"no conversion to {precision!r}; expected fp16 or int8")
