"""The typed configuration of a curation run: one frozen dataclass per rule family.

A config comes from code (`CurateConfig()` is a sensible default) or from a mapping read
out of a JSON/YAML file (`CurateConfig.from_dict`, read by tipsv2_core/schema.py). Unknown
keys, wrong types and values out of range are a `CurateConfigError` naming the dotted key,
raised before any work starts.
`to_dict` gives the resolved config, which is written into the dataset card.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from tipsv2_core.schema import build

CAPTION_FIELDS = ("alt_text", "caption_medium", "caption_long")


class CurateConfigError(ValueError):
    """A bad curation config or a source that does not fit it; the message names the key."""


@dataclass(frozen=True)
class ImageRules:
    """Decode, convert and filter rules for images. Sizes are in pixels."""

    # Pillow plugins allowed to open a file: only formats worth training on, and none that
    # calls out to other programs (EPS runs Ghostscript).
    # (JPEG includes multi-picture MPO files from phones.)
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    max_file_bytes: int = 64 << 20  # larger files are rejected before decoding
    max_pixels: int = 89_478_485  # decompression-bomb limit on width*height (Pillow's default)
    min_side: int = 32  # the shorter side must reach this
    max_side: int = 16384  # the longer side may not exceed this (before any resize)
    max_aspect_ratio: float = 6.0  # longer side / shorter side
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are laid on this
    resize_max_side: int | None = None  # downscale the stored image so its longer side fits
    store_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = 95
    # Store the source bytes unchanged when the source already has the store format and
    # cleaning changed nothing: no generation loss, no encoding cost.
    keep_source_bytes: bool = True


@dataclass(frozen=True)
class CaptionRules:
    """Caption decoding and normalisation; lengths count characters after normalisation."""

    min_chars: int = 1  # shorter captions count as missing
    max_chars: int = 2000
    too_long: Literal["truncate", "reject"] = "truncate"  # truncation keeps whole words
    undecodable: Literal["reject", "replace"] = "reject"  # bytes that are not UTF-8/UTF-16


@dataclass(frozen=True)
class DedupRules:
    """Exact duplicates share a content hash; near ones have pHashes within `max_hamming`."""

    exact: bool = True
    near: bool = True
    # Of 64 bits. Re-encoding and mild resizing move 0-2 bits; on the synthetic scenes 4
    # flags ~0.7 % of distinct pictures (simple layouts on plain backgrounds), 6 ~1.2 %.
    max_hamming: int = 4


@dataclass(frozen=True)
class TableColumns:
    """Columns of CSV / Parquet manifests. None means: the first of the usual names present.

    A name given here must exist in every table source, or the run stops before any work.
    """

    image: str | None = None  # default: image, image_path, path, file_name, filepath
    alt_text: str | None = None  # default: alt_text, caption, text
    caption_medium: str | None = None  # default: caption_medium, if present
    caption_long: str | None = None  # default: caption_long, if present
    classes: str | None = None  # default: classes, if present ("a|b" strings or lists)


@dataclass(frozen=True)
class CaptionerSpec:
    """Which captioner fills missing caption fields (see captioners.py).

    `name` is "alt_text" (copy the alt-text), "rules" (describe colours and layout) or
    "package.module:Class" for a plug-in such as a VLM, built with `options`.
    """

    name: str = "alt_text"
    options: Mapping[str, Any] = field(default_factory=dict)
    num_gpus: float = 0.0  # per Ray worker, for captioners that run a model


@dataclass(frozen=True)
class CurateConfig:
    images: ImageRules = field(default_factory=ImageRules)
    captions: CaptionRules = field(default_factory=CaptionRules)
    dedup: DedupRules = field(default_factory=DedupRules)
    columns: TableColumns = field(default_factory=TableColumns)
    captioner: CaptionerSpec = field(default_factory=CaptionerSpec)
    splits: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.9, "val": 0.05, "test": 0.05}
    )
    shard_max_samples: int = 1000
    shard_max_bytes: int = 512 << 20
    coco_image_root: str | None = None  # default: the JSON's folder (or its images/)

    def __post_init__(self) -> None:
        check(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CurateConfig:
        """A config from a (JSON/YAML) mapping; missing keys keep their defaults."""
        return build(cls, doc, error=CurateConfigError)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise CurateConfigError(msg)


def check(cfg: CurateConfig) -> None:
    """Raises CurateConfigError for values out of range."""
    im, cap, dd = cfg.images, cfg.captions, cfg.dedup
    _require(bool(im.formats), "images.formats: name at least one image format")
    Image.init()
    unknown = [f for f in im.formats if f not in Image.OPEN]
    _require(not unknown, f"images.formats: Pillow cannot open {unknown}")
    _require(im.max_file_bytes > 0, "images.max_file_bytes must be positive")
    _require(im.max_pixels > 0, "images.max_pixels must be positive")
    _require(1 <= im.min_side <= im.max_side, "images: need 1 <= min_side <= max_side")
    _require(im.max_aspect_ratio >= 1.0, "images.max_aspect_ratio must be at least 1")
    _require(all(0 <= c <= 255 for c in im.background), "images.background: three values in 0..255")
    _require(
        im.resize_max_side is None or im.resize_max_side >= im.min_side,
        "images.resize_max_side must be at least images.min_side",
    )
    _require(1 <= im.jpeg_quality <= 100, "images.jpeg_quality must be in 1..100")
    _require(0 <= cap.min_chars <= cap.max_chars, "captions: need 0 <= min_chars <= max_chars")
    _require(cap.max_chars >= 1, "captions.max_chars must be positive")
    _require(0 <= dd.max_hamming <= 32, "dedup.max_hamming must be in 0..32 (of 64 bits)")
    _require(bool(cfg.splits), "splits: name at least one split")
    _require(
        all(s and s.replace("_", "").replace("-", "").isalnum() for s in cfg.splits),
        f"splits: names must be letters, digits, '_' or '-', got {list(cfg.splits)}",
    )
    ratios = list(cfg.splits.values())
    _require(
        all(r >= 0 for r in ratios) and abs(sum(ratios) - 1.0) < 1e-6,
        f"splits: ratios must be non-negative and sum to 1, got {dict(cfg.splits)}",
    )
    _require(cfg.shard_max_samples >= 1, "shard_max_samples must be positive")
    _require(cfg.shard_max_bytes >= 1 << 20, "shard_max_bytes must be at least 1 MiB")
    _require(bool(cfg.captioner.name), "captioner.name must not be empty")
    _require(cfg.captioner.num_gpus >= 0, "captioner.num_gpus must not be negative")
