"""Image rules: open safely, verify by decoding, orient, convert to RGB, filter, resize, encode.

`clean_image(data, rules)` turns the bytes of one file into a `CleanImage` or raises
`Reject` with a reason code. The order matters for cost and safety: everything that the
header tells (format, size, pixel count: the decompression-bomb limit) is checked before a
single pixel is decoded; the full decode then verifies the data (a truncated file fails
there). Conversions: palette and grey images (with or without transparency), LA/RGBA
composited on `rules.background`, CMYK, 16-bit and 32-bit integer or float images scaled
to 8 bits, and the EXIF orientation applied, so the stored image is upright plain RGB
that every reader decodes the same way.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tipsv2_core.data.curation.config import ImageRules
from tipsv2_core.data.curation.records import Reject

EXIF_ORIENTATION = 0x0112
STORE_FORMATS = {"jpg": "JPEG", "png": "PNG"}
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


@dataclass
class CleanImage:
    image: Image.Image  # the stored image, RGB
    data: bytes  # its encoded bytes (the tar member)
    ext: str  # "jpg" | "png"
    content_hash: str  # SHA-256 of size + RGB pixels: equal for the same picture
    source_format: str  # what the file was ("JPEG", "PNG", …)
    source_size: tuple[int, int]  # (width, height) as stored in the file
    steps: list[str] = field(default_factory=list)  # what cleaning changed, in order


def _open(data: bytes, rules: ImageRules) -> Image.Image:
    """Opens (header only) with the allowed plugins; bombs and non-images are rejected."""
    if not data:
        raise Reject("empty_file")
    if len(data) > rules.max_file_bytes:
        raise Reject("file_too_large", f"{len(data)} bytes > {rules.max_file_bytes}")
    with warnings.catch_warnings():
        # Pillow warns above its own pixel limit and raises above twice that; the limit
        # that counts is ours, checked right after from the header.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(rules.formats))
        except Image.DecompressionBombError as e:
            raise Reject("decompression_bomb", str(e)) from None
        except UnidentifiedImageError:
            raise Reject("not_an_image", f"not one of {', '.join(rules.formats)}") from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:  # broken headers
            raise Reject("undecodable", f"{type(e).__name__}: {e}") from None
    w, h = image.size
    if w < 1 or h < 1:
        raise Reject("undecodable", f"size {w}x{h}")
    if w * h > rules.max_pixels:
        raise Reject("decompression_bomb", f"{w}x{h} = {w * h} pixels > {rules.max_pixels}")
    return image


def _check_size(w: int, h: int, rules: ImageRules) -> None:
    short, long = min(w, h), max(w, h)
    if short < rules.min_side:
        raise Reject("too_small", f"{w}x{h}: shorter side < {rules.min_side}")
    if long > rules.max_side:
        raise Reject("too_large", f"{w}x{h}: longer side > {rules.max_side}")
    if long / short > rules.max_aspect_ratio:
        raise Reject("bad_aspect_ratio", f"{w}x{h}: {long / short:.2f} > {rules.max_aspect_ratio}")


def _decode(image: Image.Image, draft_side: int | None) -> Image.Image:
    """Decodes all pixels (the verification); JPEGs needing a downscale decode smaller."""
    if draft_side and image.format in ("JPEG", "MPO") and image.mode in ("RGB", "L"):
        # DCT scaling (1/2, 1/4, 1/8) to at least the target size: far less work, and the
        # final resize still filters properly.
        w, h = image.size
        scale = draft_side / max(w, h)
        image.draft(image.mode, (max(1, round(w * scale)), max(1, round(h * scale))))
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animations: the first frame
        image.load()
    except Image.DecompressionBombError as e:
        raise Reject("decompression_bomb", str(e)) from None
    except OSError as e:
        reason = "truncated" if "truncat" in str(e).lower() else "undecodable"
        raise Reject(reason, str(e)) from None
    except (ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise Reject("undecodable", f"{type(e).__name__}: {e}") from None
    return image


def _orient(image: Image.Image, steps: list[str]) -> Image.Image:
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not cost the image
        return image
    if orientation in (None, 1):
        return image
    try:
        rotated = ImageOps.exif_transpose(image)
    except Exception:  # same: keep the pixels as stored
        return image
    steps.append(f"exif_orientation_{orientation}")
    return rotated


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Integer / float pixels of any range scaled to uint8."""
    if values.dtype == np.uint16 or (values.dtype.kind in "iu" and values.max(initial=0) > 255):
        top = 65535.0 if values.max(initial=0) <= 65535 else float(values.max())
        out = values.astype(np.float64) * (255.0 / top)
    elif values.dtype.kind == "f":
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        if lo >= 0.0 and hi <= 1.0:
            out = values * 255.0  # the usual [0, 1] convention
        else:
            out = (values - lo) * (255.0 / (hi - lo)) if hi > lo else values * 0.0
        out = np.nan_to_num(out)
    else:
        out = values
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image, background: tuple[int, int, int], steps: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        steps.append(f"{mode}_to_8bit")
        grey = Image.fromarray(_to_8bit(np.asarray(image)))
        return grey.convert("RGB")
    has_alpha = mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    if has_alpha:
        steps.append(f"{mode}_alpha_on_background")
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    steps.append(f"{mode}_to_rgb")
    return image.convert("RGB")


def _resize(image: Image.Image, max_side: int | None, steps: list[str]) -> Image.Image:
    w, h = image.size
    if not max_side or max(w, h) <= max_side:
        return image
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    steps.append(f"resize_{w}x{h}_to_{size[0]}x{size[1]}")
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def content_hash(image: Image.Image) -> str:
    """SHA-256 of the size and RGB pixels: the same picture in any container hashes alike."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def encode(image: Image.Image, rules: ImageRules) -> bytes:
    buf = io.BytesIO()
    if rules.store_format == "jpg":
        image.save(buf, format="JPEG", quality=rules.jpeg_quality)
    else:
        image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def clean_image(data: bytes, rules: ImageRules) -> CleanImage:
    """The cleaned, stored form of one image file; raises Reject(reason) when it fails a rule."""
    opened = _open(data, rules)
    source_format, source_size, source_mode = opened.format or "", opened.size, opened.mode
    _check_size(*source_size, rules)
    steps: list[str] = []
    image = _decode(opened, rules.resize_max_side)
    if image.size != source_size:
        steps.append("draft_decode")
    image = _orient(image, steps)
    image = _to_rgb(image, rules.background, steps)
    image = _resize(image, rules.resize_max_side, steps)
    ext = rules.store_format
    unchanged = not steps and source_mode == "RGB"
    if rules.keep_source_bytes and unchanged and STORE_FORMATS[ext] == source_format:
        stored = data  # nothing to fix: keep the file as it came, bit for bit
    else:
        stored = encode(image, rules)
    return CleanImage(
        image=image,
        data=stored,
        ext=ext,
        content_hash=content_hash(image),
        source_format=source_format,
        source_size=source_size,
        steps=steps,
    )
