"""Exported graphs behind the PyTorch modules' interfaces, run by ONNX Runtime.

`OnnxImageEncoder` answers like `VisionTransformer` (`__call__` -> VisionOutput,
`forward_values`, `patch_size`, `embed_dim`, `cfg`), `OnnxTextEncoder` like `TextEncoder`
and `OnnxTIPSModel` like `TIPSModel`, so the library's helpers (`embed_images`,
`segment_image`, `class_text_embeddings`, …) and the CLI run either without a branch.

They are `nn.Module`s only for that interface (`eval()`, `to()`, the device of
`next(model.parameters())`): each holds one empty placeholder parameter and no weights.
Inputs are copied to CPU numpy arrays; outputs come back as float32 tensors on the
inputs' device. Sessions use the CPU execution provider and are opened on first use.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from tipsv2_core.atomic import COMPLETE_FILE
from tipsv2_core.errors import CheckpointError
from tipsv2_core.export.graphs import IMAGE_ENCODER, IMAGE_VALUES, TEXT_ENCODER
from tipsv2_core.export.precision import PRECISIONS
from tipsv2_core.models.tips import TwoTowers
from tipsv2_core.models.variants import TextConfig, Variant, VisionConfig, get_variant
from tipsv2_core.models.vision import VisionOutput

META_FILE = "export_meta.json"
PROVIDERS = ["CPUExecutionProvider"]


def make_session(
    path: str | os.PathLike, threads: int | None = None, spin: bool = False
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with all graph optimisations on (the default).

    threads: intra-op threads (None = ONNX Runtime's default, one per physical core).
    spin: let idle worker threads busy-wait for the next call (ONNX Runtime's default).
    Off here: the callers interleave ONNX Runtime with PyTorch work (segmentation's
    upsampling, the parity check's reference, the benchmark's other contender), and
    spinning threads take the cores that work needs (measured on 2 cores: PyTorch calls
    right after a session run took 1.5× longer with spinning on).
    """
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), opts, providers=PROVIDERS)


class _OnnxModule(nn.Module):
    """Lazily opened sessions plus an empty placeholder parameter (see module docstring)."""

    def __init__(self, threads: int | None) -> None:
        super().__init__()
        self._device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self._threads = threads
        self._sessions: dict[Path, ort.InferenceSession] = {}

    def session(self, path: Path) -> ort.InferenceSession:
        if path not in self._sessions:
            self._sessions[path] = make_session(path, self._threads)
        return self._sessions[path]


def _numpy(x: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=dtype)


class OnnxImageEncoder(_OnnxModule):
    """images [B, 3, H, W] in [0, 1], H and W multiples of 14 -> VisionOutput
    (cls1 [B, D], cls2 [B, D], patch_tokens [B, H/14, W/14, D]); `forward_values` ->
    values [B, H/14, W/14, D] from the `image_values` graph."""

    def __init__(
        self,
        encoder: str | os.PathLike,
        values: str | os.PathLike | None,
        cfg: VisionConfig,
        threads: int | None = None,
    ) -> None:
        super().__init__(threads)
        self.cfg = cfg
        self.encoder_path = Path(encoder)
        self.values_path = Path(values) if values is not None else None

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def _feed(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        h, w = images.shape[-2:]
        p = self.patch_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        return {"images": _numpy(images, np.float32)}

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> VisionOutput:
        if masks is not None:
            raise ValueError("the exported image encoder takes no token masks")
        cls1, cls2, patches = self.session(self.encoder_path).run(
            ["cls1", "cls2", "patch_tokens"], self._feed(images)
        )
        dev = images.device
        return VisionOutput(
            cls1=torch.from_numpy(cls1).to(dev),
            cls2=torch.from_numpy(cls2).to(dev),
            patch_tokens=torch.from_numpy(patches).to(dev),
        )

    def forward_values(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features with the values trick in the last block: [B, h, w, D]."""
        if self.values_path is None:
            raise ValueError(
                f"{self.encoder_path.parent}: this export has no image_values graph "
                "(exported with --no-values); zero-shot segmentation needs it"
            )
        (values,) = self.session(self.values_path).run(["values"], self._feed(images))
        return torch.from_numpy(values).to(images.device)


class OnnxTextEncoder(_OnnxModule):
    """ids [B, L] int64, paddings [B, L] (1 = pad) -> pooled embedding [B, D] (not normalised)."""

    def __init__(self, path: str | os.PathLike, cfg: TextConfig, threads: int | None = None):
        super().__init__(threads)
        self.cfg = cfg
        self.path = Path(path)

    @property
    def width(self) -> int:
        return self.cfg.width

    def forward(self, ids: torch.Tensor, paddings: torch.Tensor) -> torch.Tensor:
        if ids.shape != paddings.shape:
            raise ValueError(f"ids {tuple(ids.shape)} and paddings {tuple(paddings.shape)} differ")
        feeds = {"ids": _numpy(ids, np.int64), "paddings": _numpy(paddings, np.int32)}
        (emb,) = self.session(self.path).run(["embedding"], feeds)
        return torch.from_numpy(emb).to(ids.device)


class OnnxTIPSModel(TwoTowers, nn.Module):
    """The exported towers as a TIPSModel: `vision`, `text`, `temperature`, `variant`;
    `encode_image`, `encode_text` and `logits` are TIPSModel's own (`TwoTowers`)."""

    def __init__(
        self,
        vision: OnnxImageEncoder | None,
        text: OnnxTextEncoder | None,
        variant: Variant,
        temperature: float,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.text = text
        self.variant = variant
        self.temperature = nn.Parameter(torch.tensor(float(temperature)), requires_grad=False)


def export_root(path: str | os.PathLike) -> Path | None:
    """The export directory `path` is or lies in (a `.onnx` file inside one), else None."""
    p = Path(path)
    root = p if p.is_dir() else p.parent if p.suffix == ".onnx" and p.is_file() else None
    return root if root is not None and (root / META_FILE).is_file() else None


def is_onnx_export(path: str | os.PathLike) -> bool:
    """True for an export directory (with export_meta.json) or a `.onnx` file in one."""
    return export_root(path) is not None


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The export_meta.json of a complete export directory (or of a .onnx file's directory)."""
    root = export_root(path)
    if root is None:
        raise CheckpointError(f"{path}: not an ONNX export (no {META_FILE})")
    if not (root / COMPLETE_FILE).is_file():
        raise CheckpointError(f"{root}: incomplete ONNX export (no {COMPLETE_FILE} marker)")
    return json.loads((root / META_FILE).read_text())


def _precision_of(path: Path, meta: dict[str, Any]) -> str:
    """fp32 for a directory; for a .onnx file, the precision whose files include it."""
    if path.is_dir():
        return "fp32"
    for precision, files in meta["files"].items():
        if path.name in files.values():
            return precision
    raise CheckpointError(f"{path}: not one of the graphs listed in {META_FILE}")


def _variant(meta: dict[str, Any], variant: str | None) -> Variant:
    v = get_variant(meta["variant"])
    if variant is not None and get_variant(variant).name != v.name:
        raise CheckpointError(f"ONNX export holds variant {v.name!r}, not {variant!r}")
    # An export without "conv_stem" predates the small variants' conv stem (0).
    vision = replace(v.vision, pos_grid=meta["pos_grid"], conv_stem=meta.get("conv_stem", 0))
    return replace(v, vision=vision)


def load_onnx_model(
    path: str | os.PathLike,
    variant: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
) -> OnnxTIPSModel:
    """The towers of an export directory (fp32 unless `precision`), or of the precision of
    a given `.onnx` file. A tower the export lacks is None; `variant`, if given, must match.
    """
    path = Path(path)
    meta = read_meta(path)
    root = export_root(path)
    assert root is not None
    precision = precision or _precision_of(path, meta)
    if precision not in PRECISIONS or precision not in meta["files"]:
        raise CheckpointError(
            f"{root}: no {precision} graphs; this export has {sorted(meta['files'])}"
        )
    files = meta["files"][precision]
    v = _variant(meta, variant)

    def file(graph: str) -> Path | None:
        return root / files[graph] if graph in files else None

    encoder, values, text = file(IMAGE_ENCODER), file(IMAGE_VALUES), file(TEXT_ENCODER)
    vision = OnnxImageEncoder(encoder, values, v.vision, threads) if encoder else None
    text_enc = OnnxTextEncoder(text, v.text, threads) if text else None
    return OnnxTIPSModel(vision, text_enc, v, meta.get("temperature", float("nan")))


def load_onnx_vision(
    path: str | os.PathLike, variant: str | None = None, precision: str | None = None
) -> OnnxImageEncoder:
    """The exported image encoder (see load_onnx_model)."""
    model = load_onnx_model(path, variant, precision)
    if model.vision is None:
        raise CheckpointError(f"{path}: this ONNX export has no image encoder")
    return model.vision


def load_onnx_text(
    path: str | os.PathLike, variant: str | None = None, precision: str | None = None
) -> tuple[OnnxTextEncoder, torch.Tensor]:
    """(exported text encoder, temperature), like `models.io.load_text`."""
    model = load_onnx_model(path, variant, precision)
    if model.text is None:
        raise CheckpointError(f"{path}: this ONNX export has no text encoder")
    return model.text, model.temperature.detach()
