"""Images sent by clients: base64 text -> a decoded PIL image, within limits, from memory only.

Only a few raster formats are opened (PIL can also read formats that start external
programs, such as EPS through Ghostscript), the pixel count is checked from the header
before any pixel is decoded (a small file can expand to gigabytes), and nothing is ever
read from a path: the bytes come from the request.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from tipsv2_core.serving.protocol import ProtocolError

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


def decode_base64(text: str, what: str) -> bytes:
    """Strict base64 (standard alphabet, padding optional) -> bytes, else a 400."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what}: not valid base64") from None


def decode_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """An RGB image decoded from encoded bytes (PNG, JPEG, WebP, BMP, GIF).

    Raises ProtocolError 400 for bytes that are no such image, 413 for an image with
    more than `max_pixels` pixels (checked before decoding).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise ProtocolError(
                    f"{what}: {w}x{h} = {w * h} pixels, over the limit of {max_pixels}", 413
                )
            img.load()
            return img.convert("RGB")
    except ProtocolError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise ProtocolError(
            f"{what}: cannot decode the image ({type(e).__name__}); "
            f"send {', '.join(FORMATS)} bytes, base64-encoded"
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ProtocolError(f"{what}: the image is too large to decode", 413) from None
