"""The per-record work of curation: one raw record in, one accepted sample or reject out.

Pure (PIL/numpy, no I/O), so the Ray workers, the single-process loop and the tests run
exactly the same code. Steps: captions gathered (source text, then the `.txt` sidecar's
first line, then `.json` sidecar fields, first one wins per field) and normalised; the
image cleaned (images.py); missing caption fields filled by the captioner; hashes, split
and the sample's json made. Every failure is a `Rejected` with its reason;
nothing here raises for bad data.
"""

from __future__ import annotations

import json
from typing import Any

from PIL import Image

from tipsv2_core.data.curation.captioners import Captioner, fill_captions
from tipsv2_core.data.curation.captions import (
    bound,
    clean_captions,
    decode_text,
    first_line,
    normalise,
    sidecar_json,
)
from tipsv2_core.data.curation.config import CAPTION_FIELDS, CurateConfig
from tipsv2_core.data.curation.images import clean_image
from tipsv2_core.data.curation.records import Accepted, RawRecord, Reject, Rejected
from tipsv2_core.data.curation.sources import split_classes
from tipsv2_core.data.hashing import phash, sha256_hex
from tipsv2_core.data.synth_dataset import assign_split

CURATED_SOURCE_FIELDS = ("url", "coco_captions", "image_id")  # sidecar keys kept as-is


def _gather(rec: RawRecord, cfg: CurateConfig) -> tuple[dict[str, str], list[str] | None, dict]:
    """(normalised captions, classes, extra json fields) from the record and its sidecars."""
    raw: dict[str, Any] = dict(rec.captions)
    classes = rec.classes
    extra = dict(rec.extra)
    if "txt" in rec.files and "alt_text" not in raw:
        raw["alt_text"] = first_line(decode_text(rec.files["txt"], cfg.captions, "txt sidecar"))
    if "json" in rec.files:
        doc = sidecar_json(rec.files["json"], cfg.captions)
        for f in CAPTION_FIELDS:
            if f not in raw and isinstance(doc.get(f), str):
                raw[f] = doc[f]
        if "alt_text" not in raw and isinstance(doc.get("caption"), str):
            raw["alt_text"] = doc["caption"]  # img2dataset's name for the alt-text
        if classes is None:
            classes = split_classes(doc.get("classes"))
        extra.update({k: doc[k] for k in CURATED_SOURCE_FIELDS if k in doc})
    captions = clean_captions(raw, cfg.captions)
    if "alt_text" not in captions:
        raise Reject("empty_caption", "no alt-text (empty, blank or missing caption)")
    return captions, classes, extra


def _fill(
    image: Image.Image, captions: dict[str, str], cfg: CurateConfig, captioner: Captioner
) -> tuple[dict[str, str], dict[str, str]]:
    """All three caption fields (normalised and bounded like source text) and their origins."""
    try:
        filled, sources = fill_captions(image, captions, captioner)
    except Exception as e:  # a plug-in's failure costs one record, not the run
        raise Reject("captioner_failed", f"{captioner.name}: {type(e).__name__}: {e}") from None
    for f in CAPTION_FIELDS:
        if sources[f] != "source":  # captioner output follows the same rules as sources'
            text = bound(normalise(filled[f]), cfg.captions, f)
            filled[f] = text if text is not None else captions["alt_text"]
            if text is None:
                sources[f] = "alt_text"
    return filled, sources


def process_record(rec: RawRecord, cfg: CurateConfig, captioner: Captioner) -> Accepted | Rejected:
    """Cleans one record; a broken image, caption or row gives a `Rejected`, never raises."""
    if rec.error:
        return Rejected(rec.key, rec.source, rec.record, rec.error, rec.detail)
    try:
        if rec.image_ext is None or rec.image_ext not in rec.files:
            raise Reject("missing_image", "no image data")
        captions, classes, extra = _gather(rec, cfg)
        clean = clean_image(rec.files[rec.image_ext], cfg.images)
        captions, caption_sources = _fill(clean.image, captions, cfg, captioner)
    except Reject as r:
        return Rejected(rec.key, rec.source, rec.record, r.reason, r.detail)
    meta: dict[str, Any] = {
        **extra,
        **captions,
        "caption_sources": caption_sources,
        "key": rec.key,
        "source": rec.source,
        "record": rec.record,
        "split": assign_split(rec.key, dict(cfg.splits)),
        "classes": list(classes or []),
        "width": clean.image.width,
        "height": clean.image.height,
        "sha256": sha256_hex(clean.data),
        "phash": phash(clean.image),
        "cleaning": clean.steps,
        "source_format": clean.source_format,
    }
    files = {
        clean.ext: clean.data,
        "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
    }
    return Accepted(rec.key, rec.source, rec.record, files, meta, clean.content_hash, meta["phash"])
