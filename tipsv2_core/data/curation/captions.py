"""Caption rules: decode sidecar bytes, normalise text, bound its length.

Normalisation, in order: HTML entities resolved (`&amp;` -> `&`, once: "&amp;lt;" stays
"&lt;"), Unicode NFC (composed accents, so equal captions compare equal), control and
format characters (C0/C1, zero-width, BIDI marks) turned into spaces, runs of whitespace
collapsed to one space, ends stripped. A caption shorter than `min_chars` counts as
missing; a longer one than `max_chars` is cut at a word boundary or rejected.
"""

from __future__ import annotations

import codecs
import html
import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from tipsv2_core.data.curation.config import CAPTION_FIELDS, CaptionRules
from tipsv2_core.data.curation.records import Reject

_SPACE = re.compile(r"\s+")
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes, rules: CaptionRules, what: str = "caption") -> str:
    """Bytes of a text file as str: UTF-8 (or UTF-16 with a byte-order mark).

    Other encodings are a `caption_not_text` reject, or with `undecodable: replace` the
    broken bytes become U+FFFD; guessing a legacy code page would silently garble text.
    """
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        if rules.undecodable == "replace":
            return data.decode(encoding, errors="replace")
        raise Reject(
            "caption_not_text", f"{what}: not {encoding} ({e.reason} at {e.start})"
        ) from None


def first_line(text: str) -> str:
    """The first line with visible content (the alt-text of a `.txt` sidecar)."""
    for line in text.splitlines():
        if normalise(line):
            return line
    return ""


def _clean_char(ch: str) -> str:
    # Cc: control (tabs and newlines included: they become spaces and then collapse);
    # Cf: format (zero-width space/joiners, BIDI overrides, soft hyphen) - invisible.
    return " " if unicodedata.category(ch) in ("Cc", "Cf") else ch


def normalise(text: str) -> str:
    """Entities resolved, NFC, control/format characters removed, whitespace collapsed."""
    text = unicodedata.normalize("NFC", html.unescape(text))
    if not text.isprintable():
        text = "".join(_clean_char(ch) for ch in text)
    return _SPACE.sub(" ", text).strip()


def bound(text: str, rules: CaptionRules, field: str) -> str | None:
    """`text` within the length rules: None if too short, cut or rejected if too long."""
    if len(text) < max(rules.min_chars, 1):
        return None
    if len(text) <= rules.max_chars:
        return text
    if rules.too_long == "reject":
        raise Reject("caption_too_long", f"{field}: {len(text)} chars > {rules.max_chars}")
    cut = text[: rules.max_chars + 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > 0 else cut[: rules.max_chars]).rstrip()


def sidecar_json(data: bytes, rules: CaptionRules) -> dict[str, Any]:
    """The object of a `.json` sidecar; not JSON / not an object is a `bad_row` reject."""
    try:
        doc = json.loads(decode_text(data, rules, "json sidecar"))
    except json.JSONDecodeError as e:
        raise Reject("bad_row", f"json sidecar: {e}") from None
    if not isinstance(doc, dict):
        raise Reject("bad_row", "json sidecar is not an object")
    return doc


def clean_captions(raw: Mapping[str, str | None], rules: CaptionRules) -> dict[str, str]:
    """The caption fields of `raw` normalised and bounded; missing ones are left out."""
    out = {}
    for name in CAPTION_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise Reject("bad_row", f"{name} is {type(value).__name__}, not text")
        text = bound(normalise(value), rules, name)
        if text is not None:
            out[name] = text
    return out
