"""What flows through curation: raw records in, curated samples or rejects out.

A `RawRecord` is one candidate sample as a source gave it: image bytes, sidecar files,
captions already known as text, labels, or the reason it could not even be read. Each
becomes either an `Accepted` sample (the tar member bytes and metadata of a sample) or a
`Rejected` one with a reason code from `REASONS`. Keys are derived from the source label and
the record's place in it, so they are stable between runs and unique across sources.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

# Every reject reason, with what it means (the card and the summary count them by code).
REASONS: dict[str, str] = {
    "unreadable_file": "the image or its sidecar could not be read from storage",
    "missing_image": "a manifest row or sidecar names an image that does not exist",
    "unsupported_uri": "the image location is not a path, file:// or s3:// URI",
    "unsafe_member": "a tar member name leaves its folder ('..', '/x') or is not a file",
    "bad_row": "a manifest row or sidecar JSON has no usable values",
    "empty_file": "the image file has zero bytes",
    "file_too_large": "the image file exceeds images.max_file_bytes",
    "not_an_image": "no allowed image format recognises the bytes (wrong or no extension)",
    "decompression_bomb": "width x height exceeds images.max_pixels",
    "truncated": "the image data ends early",
    "undecodable": "the image is corrupt",
    "too_small": "the shorter side is below images.min_side",
    "too_large": "the longer side exceeds images.max_side",
    "bad_aspect_ratio": "longer / shorter side exceeds images.max_aspect_ratio",
    "caption_not_text": "a caption is not UTF-8 / UTF-16 text",
    "empty_caption": "no alt-text left after normalisation",
    "caption_too_long": "a caption exceeds captions.max_chars (with too_long: reject)",
    "captioner_failed": "the captioner raised for this record",
    "exact_duplicate": "the same pixels as an earlier sample",
    "near_duplicate": "a perceptual hash within dedup.max_hamming of an earlier sample",
    "duplicate_key": "a second record with the same key (the same name twice in one source)",
}

_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY = 120


class Reject(Exception):
    """Raised by a cleaning rule: the record is dropped for `reason` (a REASONS code)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def slug(text: str, limit: int = 60) -> str:
    """`text` reduced to key characters (letters, digits, '_', '-')."""
    return _KEY_CHARS.sub("_", text).strip("_-")[:limit] or "x"


def make_key(label: str, record: str) -> str:
    """The sample key of record `record` of the source labelled `label`.

    Readable (`<label>-<record>`) when that is already a valid key; otherwise the slug plus
    8 hex digits of a hash of the exact pair, so that names differing only in characters a
    key cannot hold ("a b.jpg" / "a_b.jpg") still get different keys.
    """
    plain = f"{label}-{record}"
    if len(plain) <= MAX_KEY and not _KEY_CHARS.search(plain):
        return plain
    digest = hashlib.sha256(f"{label}\0{record}".encode()).hexdigest()[:8]
    return f"{slug(label, 30)}-{slug(record, MAX_KEY - 40)}-{digest}"


@dataclass
class RawRecord:
    """One candidate sample as read from its source.

    `files` holds member/sidecar bytes by extension ("jpg", "txt", "json", …; the image
    under `image_ext`); `captions` captions already known as text; `error` a REASONS code
    when the record failed before cleaning (an unreadable file, an unsafe tar member).
    """

    key: str
    source: str  # the source's label
    record: str  # where in the source: a relative path, "shard.tar:key", "row 17", an id
    files: dict[str, bytes] = field(default_factory=dict)
    image_ext: str | None = None
    captions: dict[str, str] = field(default_factory=dict)
    classes: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # kept in the sample's json
    error: str | None = None
    detail: str = ""


@dataclass
class Accepted:
    """A cleaned sample: tar member bytes plus what the driver needs to dedup and count."""

    key: str
    source: str
    record: str
    files: dict[str, bytes]  # {"jpg"|"png": image, "json": meta}
    meta: dict[str, Any]  # the json member's content
    content_hash: str  # SHA-256 of the stored pixels (exact duplicates)
    phash: str  # 64-bit perceptual hash, hex (near duplicates)


@dataclass
class Rejected:
    key: str
    source: str
    record: str
    reason: str
    detail: str = ""

    def row(self) -> dict[str, str]:
        return {
            "key": self.key,
            "source": self.source,
            "record": self.record,
            "reason": self.reason,
            "detail": self.detail[:500],
        }
