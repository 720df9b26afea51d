"""A model ready to serve: an ONNX export on ONNX Runtime (or a native checkpoint on
PyTorch), its tokenizer, and the checks it passes before it takes traffic.

The inference itself is the library's: `inference.embed_pixels` / `embed_texts` and
`eval.visualize.segment_image`, so the server answers exactly what `tipsv2 embed` and
`tipsv2 segment` compute for the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tipsv2_core.errors import CheckpointError
from tipsv2_core.eval.visualize import segment_image
from tipsv2_core.inference import embed_pixels, embed_texts
from tipsv2_core.text.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.model"


@dataclass
class Servable:
    """model: a TIPSModel or its ONNX Runtime stand-in (same interface); version: the
    registry version ("local" for a path); precision: fp32 / int8 (ONNX) or torch;
    fingerprint: the weights' hash (tipsv2_core.fingerprint), what an index of images
    embedded by this model records."""

    model: Any
    tokenizer: Tokenizer | None
    version: str
    source: str
    precision: str
    meta: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def embed_dim(self) -> int:
        return int(self.model.vision.embed_dim)

    @property
    def text_dim(self) -> int:
        return int(self.model.text.cfg.width) if self.model.text is not None else 0

    @property
    def patch_size(self) -> int:
        return int(self.model.vision.patch_size)

    @property
    def has_text(self) -> bool:
        return self.model.text is not None and self.tokenizer is not None

    def embed_images(self, pixels: np.ndarray, patch_tokens: bool) -> dict[str, np.ndarray]:
        """pixels [B, 3, S, S] float32 in [0, 1] -> cls1, cls2 [B, D] (L2-normalised),
        patch_tokens [B, S/14, S/14, D] when asked."""
        return embed_pixels(self.model.vision, torch.from_numpy(pixels), patch_tokens)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Raw strings (lowercased and tokenised here) -> L2-normalised embeddings [N, D]."""
        if not self.has_text:
            raise CheckpointError(f"{self.source}: no text encoder or tokenizer to embed texts")
        return embed_texts(self.model.text, self.tokenizer, list(texts), batch_size=len(texts))

    def segment(
        self, image: Image.Image, classes: Sequence[str], eval_size: int, mode: str
    ) -> np.ndarray:
        """Zero-shot label map [H, W] at the image's size (indices into `classes`)."""
        if not self.has_text:
            raise CheckpointError(f"{self.source}: segmentation needs the text encoder")
        return segment_image(
            self.model, self.tokenizer, image, list(classes), eval_size=eval_size, mode=mode
        )


def _int8_allowed(meta: dict[str, Any], tolerance: float | None) -> bool:
    """int8 graphs exist and their accuracy delta measured at export is within tolerance."""
    if tolerance is None or "int8" not in meta.get("files", {}):
        return False
    measured = (meta.get("precision_parity") or {}).get("int8", {}).get("max_abs_diff")
    return measured is not None and float(measured) <= tolerance


def _tokenizer(given: str | os.PathLike | None, *candidates: Path) -> Tokenizer | None:
    if given is not None:
        return Tokenizer(given)
    for cand in candidates:
        if cand.is_file():
            return Tokenizer(cand)
    return None


def load_servable(
    path: str | os.PathLike,
    *,
    version: str = "local",
    source: str | None = None,
    int8_tolerance: float | None = None,
    tokenizer: str | os.PathLike | None = None,
    threads: int | None = None,
) -> Servable:
    """An ONNX export directory (served on ONNX Runtime) or a native checkpoint (PyTorch).

    An export must record a passed fp32 parity check; its int8 graphs are served instead
    of fp32 only when `int8_tolerance` is given and the int8 delta measured at export
    (`precision_parity.int8.max_abs_diff`) is within it. The tokenizer defaults to the
    export's own `tokenizer.model` (or the one beside a checkpoint).
    """
    from tipsv2_core.export.runtime import export_root, load_onnx_model, read_meta
    from tipsv2_core.fingerprint import model_fingerprint
    from tipsv2_core.models.io import is_native, load_model

    path = Path(path)
    source = source or str(path)
    if export_root(path) is not None:
        meta = read_meta(path)
        parity = meta.get("parity") or {}
        if parity.get("passed") is not True:
            raise CheckpointError(
                f"{source}: the export's parity check did not pass "
                f"(max |onnx - torch| = {parity.get('max_abs_diff')}, "
                f"tolerance {parity.get('tolerance')}); refusing to serve it"
            )
        precision = "int8" if _int8_allowed(meta, int8_tolerance) else "fp32"
        model = load_onnx_model(path, precision=precision, threads=threads)
        root = export_root(path)
        assert root is not None
        tok = _tokenizer(tokenizer, root / TOKENIZER_FILE)
    elif is_native(path):
        meta = {}
        precision = "torch"
        model = load_model(path).eval()
        tok = _tokenizer(tokenizer, path / TOKENIZER_FILE, path.parent / TOKENIZER_FILE)
    else:
        raise CheckpointError(f"{source}: neither an ONNX export nor a native checkpoint")
    if model.vision is None:
        raise CheckpointError(f"{source}: no image encoder to serve")
    if tok is not None and model.text is not None and tok.vocab_size > model.text.cfg.vocab_size:
        raise CheckpointError(
            f"{tok.path}: {tok.vocab_size} pieces, more than the model's vocabulary of "
            f"{model.text.cfg.vocab_size}"
        )
    fingerprint = model_fingerprint(path)
    return Servable(model, tok, str(version), source, precision, meta, fingerprint)


def warm_up(servable: Servable, image_size: int) -> None:
    """One request per task through the real graphs, before the model takes traffic:
    opens the sessions and checks output shapes and finiteness (CheckpointError if not)."""
    s = image_size - image_size % servable.patch_size or servable.patch_size
    pixels = np.full((1, 3, s, s), 0.5, dtype=np.float32)
    out = servable.embed_images(pixels, patch_tokens=False)
    for name in ("cls1", "cls2"):
        arr = out[name]
        if arr.shape != (1, servable.embed_dim) or not np.isfinite(arr).all():
            raise CheckpointError(
                f"{servable.source}: warm-up {name} has shape {arr.shape} or non-finite values"
            )
    if servable.has_text:
        emb = servable.embed_texts(["a photo of a warm-up request."])
        if emb.shape[0] != 1 or not np.isfinite(emb).all():
            raise CheckpointError(f"{servable.source}: warm-up text embedding is not finite")
