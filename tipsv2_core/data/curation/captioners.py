"""Captioners fill the caption fields a source did not provide (TIPSv2 §3.3 granularities).

TIPSv2 pairs CLS1 with web alt-text and CLS2 with a medium (PaliGemma-like) or long
(Gemini-like) synthetic caption, so every sample needs all three fields. A source that
gives only alt-text gets the missing ones from a `Captioner`; the sample's json records
where each field came from in `caption_sources` ("source", "alt_text", "rules", or the
plug-in's `name`), so training and evaluation can tell real captions from stand-ins.

Built in:
- `AltTextCaptioner` ("alt_text"): copies the alt-text. It is also the fallback for
  anything another captioner leaves empty.
- `RuleCaptioner` ("rules"): describes named colours, sizes and positions of the regions
  of a picture. Right for the synthetic scenes (flat coloured shapes); a stand-in elsewhere.

Plugging in a VLM: write a class with a `name` and a `caption` method (the `Captioner`
protocol), importable on every Ray worker, and name it in the config:

    captioner: {name: "my_pkg.vlm:PaliGemmaCaptioner", options: {model: /models/pg2}, num_gpus: 1}

It is built once per worker process with `**options` (load the model in `__init__`) and
called per record with the cleaned RGB image, the captions known so far and the fields to
fill; return {field: text} for those it can. `num_gpus` reserves GPUs per Ray task. The
config names code to import, so it must be trusted like the code itself.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from tipsv2_core.data.curation.config import CAPTION_FIELDS
from tipsv2_core.data.palette import BACKGROUND_COLOURS, OBJECT_COLOURS


@runtime_checkable
class Captioner(Protocol):
    """Fills caption fields; `name` is what `caption_sources` records for them."""

    name: str

    def caption(
        self, image: Image.Image, captions: Mapping[str, str], missing: Sequence[str]
    ) -> dict[str, str]:
        """Text for some or all of the `missing` fields, given the RGB image and the
        captions known so far (at least `alt_text`)."""
        ...


class AltTextCaptioner:
    """Uses the alt-text for every missing field (the fallback; marks it as such)."""

    name = "alt_text"

    def caption(
        self, image: Image.Image, captions: Mapping[str, str], missing: Sequence[str]
    ) -> dict[str, str]:
        return {f: captions["alt_text"] for f in missing if captions.get("alt_text")}


# Named colours to snap pixels to; background names win ties with object names.
_NAMES = list(dict.fromkeys([*BACKGROUND_COLOURS, *OBJECT_COLOURS]))
_RGB = np.array([BACKGROUND_COLOURS.get(n) or OBJECT_COLOURS[n] for n in _NAMES], np.float32)
MIN_SHARE = 0.03  # regions smaller than this share of the picture are not mentioned


def _where(cx: float, cy: float) -> str:
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    if row and col:
        return f"in the {row} {col}"
    if row or col:
        return f"at the {row or col}"
    return "in the centre"


def _size(share: float) -> str:
    return "small" if share < 0.08 else "large" if share > 0.25 else "medium-sized"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class RuleCaptioner:
    """Medium and long captions from the colours of a picture, by fixed rules.

    The picture is shrunk to 64 px and every pixel snapped to the nearest named colour;
    the most common colour on the border is the background, every other colour covering
    at least 3 % is a region, described by size and by the position of its centre.
    """

    name = "rules"

    def describe(self, image: Image.Image) -> tuple[str, str]:
        small = image.convert("RGB")
        small.thumbnail((64, 64))
        px = np.asarray(small, np.float32)
        h, w = px.shape[:2]
        labels = ((px[:, :, None, :] - _RGB) ** 2).sum(-1).argmin(-1)  # [h, w]
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        bg = Counter(border.tolist()).most_common(1)[0][0]
        ys, xs = np.mgrid[0:h, 0:w]
        regions = []
        for idx, n in Counter(labels.ravel().tolist()).most_common():
            share = n / labels.size
            if idx == bg or share < MIN_SHARE:
                continue
            mask = labels == idx
            where = _where(xs[mask].mean() / w, ys[mask].mean() / h)
            regions.append((_NAMES[idx], _size(share), where, share))
        shape = "square" if abs(w - h) <= 1 else "landscape" if w > h else "portrait"
        background = f"{_NAMES[bg]} background"
        if not regions:
            return f"a plain {background}", f"A {shape} picture: a plain {background}."
        medium = _join([f"a {s} {c} shape" for c, s, _, _ in regions[:4]]) + f" on a {background}"
        parts = [f"a {s} {c} shape {where}" for c, s, where, _ in regions[:5]]
        top = regions[0]
        long = (
            f"A {shape} picture with a {background}. It shows {_join(parts)}. "
            f"The largest region is {top[0]}, covering about {round(top[3] * 100)}% of it."
        )
        return medium, long

    def caption(
        self, image: Image.Image, captions: Mapping[str, str], missing: Sequence[str]
    ) -> dict[str, str]:
        medium, long = self.describe(image)
        found = {"caption_medium": medium, "caption_long": long}
        return {f: found[f] for f in missing if f in found}


BUILT_IN = {"alt_text": AltTextCaptioner, "rules": RuleCaptioner}


@lru_cache(maxsize=8)
def _load(name: str, options: tuple[tuple[str, Any], ...]) -> Captioner:
    if name in BUILT_IN:
        return BUILT_IN[name](**dict(options))
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(
            f"captioner {name!r}: use one of {sorted(BUILT_IN)} or 'package.module:Class'"
        )
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"captioner {name!r} cannot be imported: {e}") from None
    captioner = factory(**dict(options))
    if not isinstance(captioner, Captioner):
        raise ValueError(f"captioner {name!r} lacks a `name` and a `caption` method")
    return captioner


def load_captioner(name: str, options: Mapping[str, Any] | None = None) -> Captioner:
    """The captioner called `name`, built once per process (models load once per worker)."""
    frozen = tuple(sorted((options or {}).items()))
    try:
        return _load(name, frozen)
    except TypeError as e:  # unhashable options (lists): build without the cache
        if "unhashable" not in str(e):
            raise
        return _load.__wrapped__(name, frozen)


def fill_captions(
    image: Image.Image, captions: Mapping[str, str], captioner: Captioner
) -> tuple[dict[str, str], dict[str, str]]:
    """(all three caption fields, where each came from) for a record with an alt-text."""
    out = dict(captions)
    sources = {f: "source" for f in out}
    missing = [f for f in CAPTION_FIELDS if f not in out]
    if missing and not isinstance(captioner, AltTextCaptioner):
        for f, text in captioner.caption(image, out, missing).items():
            if f in missing and isinstance(text, str) and text.strip():
                out[f], sources[f] = text, captioner.name
    for f in CAPTION_FIELDS:
        if f not in out:
            out[f], sources[f] = out["alt_text"], AltTextCaptioner.name
    return out, sources
