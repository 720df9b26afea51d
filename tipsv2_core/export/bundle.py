"""A whole export: the graphs of a TIPSModel in a directory, parity-checked, written atomically.

    <out>/image_encoder.onnx      images -> cls1, cls2, patch_tokens
    <out>/image_values.onnx       images -> values (zero-shot segmentation features)
    <out>/text_encoder.onnx       ids, paddings -> embedding
    <out>/*.fp16.onnx, *.int8.onnx   optional reduced-precision copies
    <out>/tokenizer.model         when one is given (CLI text commands find it here)
    <out>/export_meta.json        variant, opset, files, parity numbers, source checkpoint
    <out>/COMPLETE                written last

Everything is written into a hidden sibling directory and renamed into place only after
the fp32 graphs pass the parity check, so a failed export never looks complete and a
previous export at `out` survives it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from tipsv2_core.atomic import commit_directory, temporary_sibling
from tipsv2_core.checkpoint import read_meta as read_checkpoint_meta
from tipsv2_core.export.graphs import (
    GRAPH_NAMES,
    TEXT_ENCODER,
    graph_module,
    graph_spec,
)
from tipsv2_core.export.inputs import DEFAULT_BATCHES, InputCase, image_cases, text_cases
from tipsv2_core.export.onnx_export import OPSET, export_graph, needs_external_data
from tipsv2_core.export.parity import (
    METRIC,
    TOLERANCE,
    ParityReport,
    compare_session,
    enforce,
    metric_name,
    torch_outputs,
)
from tipsv2_core.export.precision import convert, model_file
from tipsv2_core.export.runtime import META_FILE, make_session, read_meta
from tipsv2_core.models.tips import TIPSModel
from tipsv2_core.provenance import git_sha
from tipsv2_core.text.tokenizer import Tokenizer

FORMAT = "tipsv2-onnx"
FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.model"
DEFAULT_IMAGE_SIZES = (224, 448)


@dataclass
class ExportResult:
    """What `export_model` wrote and measured.

    files: {precision: {graph: file name}}; parity: fp32 vs PyTorch (enforced);
    precision_parity: fp16 / int8 vs fp32 PyTorch (reported only).
    """

    path: Path
    variant: str
    opset: int
    image_sizes: list[int]
    files: dict[str, dict[str, str]]
    parity: ParityReport
    precision_parity: dict[str, ParityReport] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float:
        """Overall fp32 max |onnx - torch| (the metric `export/onnx/max_abs_diff`)."""
        return self.parity.max_abs_diff

    @property
    def max_abs_diff_per_output(self) -> dict[str, float]:
        """fp32 max |onnx - torch| per `<graph>/<output>`."""
        return self.parity.max_abs_diff_per_output

    def metrics(self) -> dict[str, float]:
        """Namespaced metrics (docs/architecture.md, "Metric names"), ready to log."""
        out = {METRIC: self.max_abs_diff}
        out |= {f"{METRIC}/{k}": v for k, v in self.max_abs_diff_per_output.items()}
        for precision, report in self.precision_parity.items():
            out[metric_name(precision)] = report.max_abs_diff
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (what `tipsv2 export` prints)."""
        return {
            "out": str(self.path),
            "variant": self.variant,
            "opset": self.opset,
            "image_sizes": self.image_sizes,
            "files": self.files,
            "passed": self.parity.passed,
            "tolerance": self.parity.tolerance,
            "metrics": {k: (v if v != float("inf") else None) for k, v in self.metrics().items()},
        }


def _check_sizes(sizes: Sequence[int], patch: int) -> list[int]:
    if not sizes:
        raise ValueError("give at least one image size for the parity check")
    bad = [s for s in sizes if s < patch or s % patch]
    if bad:
        raise ValueError(f"image sizes {bad} are not positive multiples of the patch size {patch}")
    return [int(s) for s in dict.fromkeys(sizes)]


def _cpu_float(model: TIPSModel) -> TIPSModel:
    """The model itself if already fp32 on CPU and in eval mode, else an fp32 CPU copy."""
    p = next(model.parameters())
    if p.dtype == torch.float32 and p.device.type == "cpu" and not model.training:
        return model
    return copy.deepcopy(model).float().cpu().eval()


def _example(graph: str, model: TIPSModel, size: int) -> dict[str, torch.Tensor]:
    """Export-time example inputs, batch 2 (batch 1 would be specialised by torch.export)."""
    if graph == TEXT_ENCODER:
        n = model.text.cfg.max_len
        ids = torch.randint(1, model.text.cfg.vocab_size, (2, n), generator=_gen())
        ids[1, n // 2 :] = 0
        return {"ids": ids, "paddings": (ids == 0).to(torch.int32)}
    return {"images": torch.rand(2, 3, size, size, generator=_gen())}


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def parity_cases(
    graph: str,
    model: TIPSModel,
    image_sizes: Sequence[int],
    tokenizer: Tokenizer | None,
    batches: Sequence[int] = DEFAULT_BATCHES,
) -> list[InputCase]:
    """The input cases graph `graph` is checked on."""
    if graph == TEXT_ENCODER:
        cfg = model.text.cfg
        return text_cases(cfg.vocab_size, cfg.max_len, tokenizer, batches)
    return image_cases(image_sizes, batches)


def check_parity(
    directory: str | os.PathLike,
    model: TIPSModel,
    files: dict[str, str],
    precision: str,
    image_sizes: Sequence[int],
    *,
    tokenizer: Tokenizer | None = None,
    tolerance: float | None = TOLERANCE,
    batches: Sequence[int] = DEFAULT_BATCHES,
    references: dict[str, tuple[list[InputCase], list]] | None = None,
) -> ParityReport:
    """Runs each graph file {graph: file} under ONNX Runtime against `model` in PyTorch.

    references caches the inputs and PyTorch outputs per graph across precisions (filled
    on first use). Does not raise: see `parity.enforce`.
    """
    directory = Path(directory)
    references = {} if references is None else references
    report = ParityReport(precision, tolerance)
    for graph, name in files.items():
        if graph not in references:
            cases = parity_cases(graph, model, image_sizes, tokenizer, batches)
            module = graph_module(graph, model.vision, model.text)
            references[graph] = (cases, torch_outputs(module, cases))
        cases, refs = references[graph]
        session = make_session(directory / name)
        report.cases += compare_session(graph, session, cases, refs)
    return report


def _load_tokenizer(tokenizer: str | os.PathLike | Tokenizer | None) -> Tokenizer | None:
    if tokenizer is None or isinstance(tokenizer, Tokenizer):
        return tokenizer
    return Tokenizer(tokenizer)


def export_model(
    model: TIPSModel,
    out: str | os.PathLike,
    *,
    image_sizes: Sequence[int] = DEFAULT_IMAGE_SIZES,
    graphs: Sequence[str] = GRAPH_NAMES,
    fp16: bool = False,
    int8: bool = False,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    source: str | None = None,
    source_meta: dict[str, Any] | None = None,
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
    batches: Sequence[int] = DEFAULT_BATCHES,
    external_data: bool | None = None,
) -> ExportResult:
    """Exports `model`'s graphs to the directory `out` and checks them against PyTorch.

    image_sizes: square sizes (multiples of 14) the parity check runs at; the graphs
    themselves accept any batch and any H, W multiple of 14. Parity: ONNX Runtime (CPU)
    vs PyTorch on random and real-looking inputs at batches `batches` (each size, plus a
    non-square image); fp32 must be within `tolerance` (max abs diff) or ParityError is
    raised and nothing is written at `out`. fp16 / int8 copies are measured the same way
    and reported. tokenizer: copied into the export and used for caption inputs.
    """
    t_start = time.perf_counter()
    model = _cpu_float(model)
    image_sizes = _check_sizes(image_sizes, model.vision.patch_size)
    unknown = [g for g in graphs if g not in GRAPH_NAMES]
    if unknown or not graphs:
        raise ValueError(f"graphs must be a non-empty subset of {GRAPH_NAMES}, got {graphs}")
    graphs = [g for g in GRAPH_NAMES if g in graphs]
    tok = _load_tokenizer(tokenizer)
    precisions = ["fp32"] + (["fp16"] if fp16 else []) + (["int8"] if int8 else [])
    files = {p: {g: model_file(g, p) for g in graphs} for p in precisions}
    width = model.variant.vision.embed_dim
    out = Path(out)
    tmp = temporary_sibling(out)
    timings: dict[str, float] = {}
    try:
        for graph in graphs:
            t0 = time.perf_counter()
            module = graph_module(graph, model.vision, model.text)
            large = needs_external_data(module) if external_data is None else external_data
            export_graph(
                module,
                _example(graph, model, image_sizes[0]),
                graph_spec(graph, width),
                tmp / files["fp32"][graph],
                patch_size=model.vision.patch_size,
                opset=opset,
                external_data=large,
                metadata={"tipsv2.variant": model.variant.name},
            )
            for precision in precisions[1:]:
                convert(tmp / files["fp32"][graph], tmp / files[precision][graph], precision, large)
            timings[f"export/{graph}"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        # Inputs and PyTorch outputs are computed once and shared by all precisions.
        refs: dict[str, tuple[list[InputCase], list]] = {}

        def parity_of(precision: str, tol: float | None) -> ParityReport:
            return check_parity(
                tmp, model, files[precision], precision, image_sizes,
                tokenizer=tok, tolerance=tol, batches=batches, references=refs,
            )  # fmt: skip

        parity = enforce(parity_of("fp32", tolerance))
        reduced = {p: parity_of(p, None) for p in precisions[1:]}
        timings["parity"] = time.perf_counter() - t0
        if tok is not None:
            shutil.copyfile(tok.path, tmp / TOKENIZER_FILE)
        timings["total"] = time.perf_counter() - t_start
        result = ExportResult(out, model.variant.name, opset, image_sizes, files, parity, reduced)
        result.meta = _meta(result, model, graphs, tok, source, source_meta, timings)
        (tmp / META_FILE).write_text(_dumps(result.meta))
        commit_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def _meta(
    result: ExportResult,
    model: TIPSModel,
    graphs: Sequence[str],
    tokenizer: Tokenizer | None,
    source: str | None,
    source_meta: dict[str, Any] | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    width = model.variant.vision.embed_dim
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": model.variant.name,
        "pos_grid": model.vision.cfg.pos_grid,
        "conv_stem": model.vision.cfg.conv_stem,
        "patch_size": model.vision.patch_size,
        "text_max_len": model.text.cfg.max_len,
        "temperature": float(model.temperature.detach()),
        "opset": result.opset,
        "exporter": {
            "path": "torch.onnx.export(dynamo=True, optimize=False) + ORT basic optimisation",
            "torch": torch.__version__,
            "onnx": version("onnx"),
            "onnxruntime": version("onnxruntime"),
            "onnxscript": version("onnxscript"),
        },
        "graphs": {g: graph_spec(g, width).as_json() for g in graphs},
        "dynamic_axes": {
            "batch": "any",
            "height/width": f"any multiple of {model.vision.patch_size}",
            "length": "any (texts are padded to 64 by the tokenizer)",
        },
        "files": result.files,
        "image_sizes": result.image_sizes,
        "tokenizer": TOKENIZER_FILE if tokenizer is not None else None,
        "source_checkpoint": source,
        "source_meta": source_meta or {},
        "metric": METRIC,
        "metrics": {k: (v if v != float("inf") else None) for k, v in result.metrics().items()},
        "parity": result.parity.as_json(),
        "precision_parity": {p: r.as_json() for p, r in result.precision_parity.items()},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_sha": git_sha(),
    }


def verify_export(
    path: str | os.PathLike,
    model: TIPSModel,
    *,
    precision: str = "fp32",
    image_sizes: Sequence[int] | None = None,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    tolerance: float | None = TOLERANCE,
    batches: Sequence[int] = DEFAULT_BATCHES,
) -> ParityReport:
    """Re-runs the parity check of a complete export directory against `model`.

    Raises ParityError when `tolerance` is set and exceeded (e.g. a graph edited or
    corrupted after export, or `model` is not the exported one).
    """
    meta = read_meta(path)
    files = meta["files"].get(precision)
    if files is None:
        raise ValueError(f"{path}: no {precision} graphs; it has {sorted(meta['files'])}")
    model = _cpu_float(model)
    sizes = _check_sizes(image_sizes or meta["image_sizes"], model.vision.patch_size)
    tok = _load_tokenizer(tokenizer)
    report = check_parity(
        path, model, files, precision, sizes, tokenizer=tok, tolerance=tolerance, batches=batches
    )
    return enforce(report)


# What an export records of a native checkpoint's meta.json (its lineage).
SOURCE_META_KEYS = ("step", "variant", "git_sha", "data_version", "created_at", "recipe")


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    variant: str | None = None,
    **kwargs: Any,
) -> ExportResult:
    """`export_model` of a native checkpoint directory or an official npz pair, with the
    source recorded in export_meta.json. kwargs: those of export_model."""
    from tipsv2_core.models.io import is_native, load_model

    model = load_model(checkpoint, variant)
    source_meta: dict[str, Any] = {}
    if is_native(checkpoint):
        meta = read_checkpoint_meta(checkpoint)
        source_meta = {k: meta[k] for k in SOURCE_META_KEYS if k in meta}
    source = str(Path(checkpoint).resolve())
    return export_model(model, out, source=source, source_meta=source_meta, **kwargs)
