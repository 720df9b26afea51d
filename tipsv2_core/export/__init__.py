"""ONNX export of TIPSv2 encoders, with a parity check against PyTorch.

`export_model` / `export_checkpoint` write an export directory (graphs, export_meta.json,
COMPLETE); `verify_export` re-checks one; `load_onnx_model` runs one with ONNX Runtime
behind the PyTorch modules' interfaces.
"""

from tipsv2_core.export.bundle import (
    DEFAULT_IMAGE_SIZES,
    ExportResult,
    export_checkpoint,
    export_model,
    verify_export,
)
from tipsv2_core.export.graphs import GRAPH_NAMES, IMAGE_ENCODER, IMAGE_VALUES, TEXT_ENCODER
from tipsv2_core.export.onnx_export import OPSET
from tipsv2_core.export.parity import METRIC, TOLERANCE, ParityError, ParityReport
from tipsv2_core.export.runtime import (
    OnnxImageEncoder,
    OnnxTextEncoder,
    OnnxTIPSModel,
    is_onnx_export,
    load_onnx_model,
    load_onnx_text,
    load_onnx_vision,
)

__all__ = [
    "DEFAULT_IMAGE_SIZES",
    "GRAPH_NAMES",
    "IMAGE_ENCODER",
    "IMAGE_VALUES",
    "METRIC",
    "OPSET",
    "TEXT_ENCODER",
    "TOLERANCE",
    "ExportResult",
    "OnnxImageEncoder",
    "OnnxTIPSModel",
    "OnnxTextEncoder",
    "ParityError",
    "ParityReport",
    "export_checkpoint",
    "export_model",
    "is_onnx_export",
    "load_onnx_model",
    "load_onnx_text",
    "load_onnx_vision",
    "verify_export",
]
