"""Content hashes of images: SHA-256 of the encoded bytes and a 64-bit perceptual hash.

`phash` is the DCT hash: the image in grey at 32×32, its 2-D DCT-II, the 8×8 lowest
frequencies thresholded at their median (the DC term left out of the median). Re-encoding,
resizing or a small brightness change flip few of its bits, so near duplicates are a small
Hamming distance apart (`hamming`).
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def _dct_matrix(n: int) -> np.ndarray:
    """[n, n] orthonormal DCT-II basis: row k is frequency k."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)
_WEIGHTS = 1 << np.arange(63, -1, -1, dtype=np.uint64)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def phash(image: Image.Image) -> str:
    """64-bit perceptual hash of an image as 16 lowercase hex digits."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.BILINEAR), np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return f"{int((bits.astype(np.uint64) * _WEIGHTS).sum()):016x}"


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
