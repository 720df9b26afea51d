"""One PyTorch graph module -> one checked `.onnx` file.

Exporter: torch.onnx's dynamo path (`torch.export` + onnxscript), `dynamo=True`. The
legacy TorchScript exporter (`dynamo=False`) cannot export this model with torch 2.13:
it has no symbolic for `aten::_upsample_bilinear2d_aa`, the antialiased bilinear resize
of the position table (its error: "Exporting the operator
'aten::_upsample_bilinear2d_aa' to ONNX opset version 18 is not supported"). The dynamo
path maps it to `Resize` with `antialias=1` (opset 18) and keeps height and width
symbolic as 14·k, so one graph serves every image size that is a multiple of 14.

Two things the dynamo path gets wrong here, and what we do about them:
- its onnxscript optimiser (`optimize=True`) removes `Add(x, c)` when |c| <= 1e-8, so
  the text pooling's `count + 1e-8` vanishes and an all-padding text becomes 0/0 = NaN
  (caught by the parity check). We export with `optimize=False` and let ONNX Runtime's
  *basic* optimiser fold constants instead (`ORT_ENABLE_BASIC`: standard ONNX ops only,
  portable across machines; the extended and all levels write contrib ops and
  machine-specific layouts). Folding matters beyond size: it turns each Linear's
  `Transpose(weight)` into an initializer, which `quantize_dynamic` needs to find the
  MatMul weights.
- asking for an output called `embedding` clashes with the token-embedding node of the
  same name; outputs are renamed after export (`protos.rename_io`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from tipsv2_core.export.graphs import GraphSpec
from tipsv2_core.export.protos import label_dims, rename_io, set_metadata, strip_unused_opsets

OPSET = 18  # Resize's antialias attribute, needed for the position-table resize, is opset 18
MIN_OPSET = 18
# Above this many bytes of weights a graph is written with its tensors in a `.data` file
# beside it: a protobuf cannot exceed 2 GiB (ViT-g's image encoder is 4.4 GB in fp32).
EXTERNAL_DATA_BYTES = 1536 * 2**20
_MAX_DIM = 8192  # upper bound torch.export needs for a symbolic axis; not a graph limit


def needs_external_data(module: torch.nn.Module) -> bool:
    """True when the module's weights would not fit one protobuf comfortably."""
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    return size > EXTERNAL_DATA_BYTES


def data_file(path: Path) -> str:
    """The name of the external-data file of `path` (`image_encoder.onnx.data`)."""
    return path.name + ".data"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silences the exporter's notices that carry no information for this model.

    ("torchvision is not installed. Skipping torchvision::nms" and friends, the
    axis-renaming notice for axes shared by two inputs, a torch-internal pytree
    deprecation.)
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*will not be used, since it shares")
            warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
            yield
    finally:
        logger.setLevel(level)


def _dynamic_shapes(
    spec: GraphSpec, feeds: Mapping[str, torch.Tensor], patch_size: int
) -> tuple[dict[int, object], ...]:
    """torch.export dims for the spec's named axes; height and width are patch multiples."""
    dims: dict[str, object] = {}

    def dim(axis: str) -> object:
        if axis not in dims:
            if axis in ("height", "width"):
                grid = torch.export.Dim(f"grid_{axis[0]}", min=1, max=_MAX_DIM)
                dims[axis] = patch_size * grid
            else:
                dims[axis] = torch.export.Dim(axis, min=1, max=_MAX_DIM)
        return dims[axis]

    return tuple(
        {i: dim(a) for i, a in enumerate(spec.inputs[name]) if isinstance(a, str)} for name in feeds
    )


def ort_basic_optimize(src: Path, dst: Path, external_data: bool) -> None:
    """Writes `src` after ONNX Runtime's basic (portable) graph optimisations to `dst`."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    if external_data:
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", data_file(dst)
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def remove_model(path: Path) -> None:
    """Deletes an .onnx file and its external-data file, if any."""
    for p in (path, path.with_name(data_file(path))):
        p.unlink(missing_ok=True)


def finalize(path: Path, spec: GraphSpec, metadata: Mapping[str, str]) -> None:
    """Names, axis labels, opset imports and metadata of a saved graph; then the checker.

    Edits the structure only (external data stays where it is), then runs
    `onnx.checker.check_model` on the file, which also follows external data and
    handles models over 2 GiB.
    """
    model = onnx.load(str(path), load_external_data=False)
    rename_io(model.graph, spec.inputs, spec.outputs)
    label_dims(model.graph, spec)
    strip_unused_opsets(model)
    set_metadata(model, metadata)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def export_graph(
    module: torch.nn.Module,
    feeds: Mapping[str, torch.Tensor],
    spec: GraphSpec,
    path: str | os.PathLike,
    *,
    patch_size: int,
    opset: int = OPSET,
    external_data: bool | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Exports `module` (called with the tensors of `feeds`, in order) to `path`.

    feeds: example inputs named as in `spec` (e.g. images [2, 3, 224, 224]); batch 2 so
    no axis is specialised to 1. external_data None decides from the weights' size.
    Returns the path of the checked model.
    """
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} < {MIN_OPSET}: the position table's antialiased Resize needs "
            f"opset {MIN_OPSET}"
        )
    path = Path(path)
    if external_data is None:
        external_data = needs_external_data(module)
    raw = path.with_name(path.stem + ".raw.onnx")
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                tuple(feeds.values()),
                dynamo=True,
                optimize=False,
                opset_version=opset,
                dynamic_shapes=_dynamic_shapes(spec, feeds, patch_size),
                verbose=False,
            )
        program.save(str(raw), external_data=external_data)
        ort_basic_optimize(raw, path, external_data)
    finally:
        remove_model(raw)
    finalize(path, spec, {"tipsv2.graph": spec.name, **(metadata or {})})
    return path
