"""The three served models and their tensors: image embedding, text embedding and zero-shot
segmentation.

Each task turns a decoded inference request into a payload (`prepare`: checks every
input against the limits, decodes images; runs off the event loop), runs a batch of
payloads on a Servable (`run`: in the inference thread), and turns one result into the
protocol's output tensors (`respond`). The JSON convenience routes build the same
requests from plain JSON (`from_json`), so both paths share every check.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tipsv2_core.eval.zeroshot_seg import pred_dtype
from tipsv2_core.inference import image_tensor
from tipsv2_core.serving.images import decode_base64, decode_image
from tipsv2_core.serving.protocol import (
    BYTES,
    InferRequest,
    ProtocolError,
    Tensor,
    TensorSpec,
    check_input,
    encode_tensor,
)
from tipsv2_core.serving.servable import Servable

SEG_MODES = ("slide", "whole")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Sizes are checked before any decoding or inference."""

    max_body_bytes: int = 16 * 2**20
    max_pixels: int = 4096 * 4096  # per decoded image (header check, before decoding)
    max_items: int = 32  # images or texts in one request
    max_classes: int = 64
    max_text_chars: int = 1000  # per text or class name (the tokenizer keeps 64 tokens)
    max_image_size: int = 896  # the side of a pixels tensor, image_size, eval_size
    timeout_s: float = 30.0  # queue wait + inference, per request
    read_timeout_s: float = 30.0  # receiving the body


@dataclass
class Prepared:
    """A checked request: what the batch function needs, how many rows, and the batch key."""

    payload: Any
    rows: int
    key: Hashable
    outputs: list[str]


def _param_int(req: InferRequest, name: str, default: int) -> int:
    value = req.parameters.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"parameter {name!r} must be an integer, got {value!r}"[:200])
    return value


def _size(value: int, name: str, patch: int, limits: Limits) -> int:
    if value < patch or value % patch or value > limits.max_image_size:
        raise ProtocolError(
            f"{name} {value}: must be a multiple of {patch} between {patch} and "
            f"{limits.max_image_size}"
        )
    return value


def _only(req: InferRequest, allowed: Sequence[str], model: str) -> None:
    extra = sorted(set(req.inputs) - set(allowed))
    if extra:
        raise ProtocolError(
            f"model {model!r} has no input(s) {extra}; its inputs are {list(allowed)}"
        )


def _outputs(req: InferRequest, specs: Sequence[TensorSpec], default: Sequence[str]) -> list[str]:
    if req.outputs is None:
        return list(default)
    names = [s.name for s in specs]
    unknown = [o for o in req.outputs if o not in names]
    if unknown:
        raise ProtocolError(f"unknown output(s) {unknown}; this model has {names}")
    return list(dict.fromkeys(req.outputs))


def _strings(t: Tensor, what: str, max_count: int, max_chars: int) -> list[str]:
    data = list(t.data)
    if not data:
        raise ProtocolError(f"input {t.name!r}: give at least one {what}")
    if len(data) > max_count:
        raise ProtocolError(
            f"input {t.name!r}: {len(data)} {what}s, over the limit of {max_count}", 413
        )
    for i, s in enumerate(data):
        if len(s) > max_chars:
            raise ProtocolError(
                f"input {t.name!r}[{i}]: {len(s)} characters, over the limit of {max_chars}",
                413,
            )
    return data


def _bytes_list(doc: Any, key: str) -> Tensor:
    """A JSON list of strings -> a BYTES tensor (the convenience routes)."""
    if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
        raise ProtocolError(f"{key!r} must be a list of strings")
    return Tensor(key, BYTES, (len(doc),), list(doc), {})


def _json_object(doc: Any, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ProtocolError("the request body must be a JSON object")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise ProtocolError(f"unknown field(s) {unknown}; expected {list(allowed)}")
    return doc


class ImageEmbedding:
    """Images -> CLS1, CLS2 (L2-normalised) and, when asked, the patch tokens.

    Inputs (one of): `image` BYTES [N] — base64-encoded PNG/JPEG/WebP/BMP/GIF files,
    resized to `parameters.image_size` (default: the server's) exactly as `tipsv2 embed
    image` does; or `pixels` FP32 [N, 3, H, W] in [0, 1], H and W multiples of 14.
    Outputs: `cls1` FP32 [N, D], `cls2` FP32 [N, D], `patch_tokens` FP32 [N, h, w, D]
    (only when listed in the request's `outputs`, or with `parameters.patch_tokens`).
    """

    name = "image-embedding"

    def inputs(self, s: Servable) -> tuple[TensorSpec, ...]:
        return (TensorSpec("image", BYTES, (-1,)), TensorSpec("pixels", "FP32", (-1, 3, -1, -1)))

    def outputs(self, s: Servable) -> tuple[TensorSpec, ...]:
        d = s.embed_dim
        return (
            TensorSpec("cls1", "FP32", (-1, d)),
            TensorSpec("cls2", "FP32", (-1, d)),
            TensorSpec("patch_tokens", "FP32", (-1, -1, -1, d)),
        )

    def prepare(self, req: InferRequest, s: Servable, limits: Limits, image_size: int) -> Prepared:
        _only(req, ("image", "pixels"), self.name)
        if len(req.inputs) != 1:
            raise ProtocolError("give exactly one of the inputs 'image' (BYTES) or 'pixels' (FP32)")
        outputs = _outputs(req, self.outputs(s), ("cls1", "cls2"))
        if req.parameters.get("patch_tokens") is True and "patch_tokens" not in outputs:
            outputs.append("patch_tokens")
        patch = s.patch_size
        if "pixels" in req.inputs:
            t = req.inputs["pixels"]
            check_input(t, self.inputs(s)[1])
            n, _, h, w = t.shape
            if not 1 <= n <= limits.max_items:
                raise ProtocolError(
                    f"input 'pixels': batch of {n}; give 1 to {limits.max_items} images", 413
                )
            _size(h, "input 'pixels': height", patch, limits)
            _size(w, "input 'pixels': width", patch, limits)
            pixels = np.ascontiguousarray(t.data, dtype=np.float32)
        else:
            t = req.inputs["image"]
            check_input(t, self.inputs(s)[0])
            size = _size(_param_int(req, "image_size", image_size), "image_size", patch, limits)
            files = _strings(t, "image", limits.max_items, limits.max_body_bytes)
            tensors = [
                image_tensor(decode_image(decode_base64(b, f"image[{i}]"), f"image[{i}]",
                                          limits.max_pixels), size)
                for i, b in enumerate(files)
            ]  # fmt: skip
            pixels = np.stack([x.numpy() for x in tensors])
        return Prepared(pixels, pixels.shape[0], ("pixels", *pixels.shape[2:]), outputs)

    def run(self, s: Servable, batch: Sequence[Prepared]) -> list[dict[str, np.ndarray]]:
        want_patches = any("patch_tokens" in p.outputs for p in batch)
        pixels = np.concatenate([p.payload for p in batch])
        out = s.embed_images(pixels, patch_tokens=want_patches)
        results, start = [], 0
        for p in batch:
            part = {k: out[k][start : start + p.rows] for k in p.outputs}
            results.append(part)
            start += p.rows
        return results

    def respond(self, result: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [encode_tensor(k, v) for k, v in result.items()]

    def from_json(self, doc: Any) -> InferRequest:
        """{"images": [base64, …], "image_size"?: int, "patch_tokens"?: bool}"""
        doc = _json_object(doc, ("images", "image_size", "patch_tokens"))
        params = {k: doc[k] for k in ("image_size", "patch_tokens") if k in doc}
        return InferRequest(None, {"image": _bytes_list(doc.get("images"), "images")}, None, params)


class TextEmbedding:
    """Raw strings -> L2-normalised text embeddings, tokenised here with the model's own
    tokenizer (lowercased, 64 tokens). Input `text` BYTES [N]; output `embedding` FP32 [N, D]."""

    name = "text-embedding"

    def inputs(self, s: Servable) -> tuple[TensorSpec, ...]:
        return (TensorSpec("text", BYTES, (-1,)),)

    def outputs(self, s: Servable) -> tuple[TensorSpec, ...]:
        return (TensorSpec("embedding", "FP32", (-1, s.text_dim)),)

    def prepare(self, req: InferRequest, s: Servable, limits: Limits, image_size: int) -> Prepared:
        _only(req, ("text",), self.name)
        if "text" not in req.inputs:
            raise ProtocolError("missing input 'text' (BYTES [N])")
        t = req.inputs["text"]
        check_input(t, self.inputs(s)[0])
        outputs = _outputs(req, self.outputs(s), ("embedding",))
        texts = _strings(t, "text", limits.max_items, limits.max_text_chars)
        return Prepared(texts, len(texts), "text", outputs)

    def run(self, s: Servable, batch: Sequence[Prepared]) -> list[dict[str, np.ndarray]]:
        emb = s.embed_texts([t for p in batch for t in p.payload])
        results, start = [], 0
        for p in batch:
            results.append({"embedding": emb[start : start + p.rows]})
            start += p.rows
        return results

    def respond(self, result: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [encode_tensor(k, v) for k, v in result.items()]

    def from_json(self, doc: Any) -> InferRequest:
        """{"texts": [str, …]}"""
        doc = _json_object(doc, ("texts",))
        return InferRequest(None, {"text": _bytes_list(doc.get("texts"), "texts")}, None, {})


class Segmentation:
    """An image and class names -> the zero-shot label map (TCL prompts, values trick,
    sliding window), as `tipsv2 segment` computes it.

    Inputs: `image` BYTES [1] (base64 file), `classes` BYTES [C]; parameters `eval_size`
    (short side, default 448) and `mode` (slide | whole). Outputs: `labels` UINT8 [H, W]
    (UINT16 beyond 255 classes) at the image's size, `pixel_share` FP32 [C].
    """

    name = "segmentation"

    def inputs(self, s: Servable) -> tuple[TensorSpec, ...]:
        return (TensorSpec("image", BYTES, (1,)), TensorSpec("classes", BYTES, (-1,)))

    def outputs(self, s: Servable) -> tuple[TensorSpec, ...]:
        return (TensorSpec("labels", "UINT8", (-1, -1)), TensorSpec("pixel_share", "FP32", (-1,)))

    def prepare(self, req: InferRequest, s: Servable, limits: Limits, image_size: int) -> Prepared:
        _only(req, ("image", "classes"), self.name)
        missing = [n for n in ("image", "classes") if n not in req.inputs]
        if missing:
            raise ProtocolError(f"missing input(s) {missing}; give 'image' [1] and 'classes' [C]")
        img_t, cls_t = req.inputs["image"], req.inputs["classes"]
        check_input(img_t, self.inputs(s)[0])
        check_input(cls_t, self.inputs(s)[1])
        outputs = _outputs(req, self.outputs(s), ("labels", "pixel_share"))
        names = _strings(cls_t, "class name", limits.max_classes, limits.max_text_chars)
        classes = [c.strip() for c in names]
        if not all(classes):
            raise ProtocolError("input 'classes': class names must not be empty")
        eval_size = _size(_param_int(req, "eval_size", 448), "eval_size", s.patch_size, limits)
        mode = req.parameters.get("mode", "slide")
        if mode not in SEG_MODES:
            raise ProtocolError(f"parameter 'mode': {mode!r}; expected one of {SEG_MODES}"[:200])
        image = decode_image(decode_base64(img_t.data[0], "image"), "image", limits.max_pixels)
        # Each request has its own classes: no two share a batch (a unique key).
        return Prepared((image, classes, eval_size, mode), 1, object(), outputs)

    def run(self, s: Servable, batch: Sequence[Prepared]) -> list[dict[str, np.ndarray]]:
        results = []
        for p in batch:
            image, classes, eval_size, mode = p.payload
            labels = s.segment(image, classes, eval_size, mode).astype(pred_dtype(len(classes)))
            share = np.bincount(labels.ravel(), minlength=len(classes)) / labels.size
            full = {"labels": labels, "pixel_share": share.astype(np.float32)}
            results.append({k: full[k] for k in p.outputs})
        return results

    def respond(self, result: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [encode_tensor(k, v) for k, v in result.items()]

    def from_json(self, doc: Any) -> InferRequest:
        """{"image": base64, "classes": [str, …], "eval_size"?: int, "mode"?: str}"""
        doc = _json_object(doc, ("image", "classes", "eval_size", "mode"))
        image = doc.get("image")
        if not isinstance(image, str):
            raise ProtocolError("'image' must be a base64 string")
        params = {k: doc[k] for k in ("eval_size", "mode") if k in doc}
        inputs = {
            "image": Tensor("image", BYTES, (1,), [image], {}),
            "classes": _bytes_list(doc.get("classes"), "classes"),
        }
        return InferRequest(None, inputs, None, params)


TASKS = (ImageEmbedding(), TextEmbedding(), Segmentation())
