"""Three captions per scene, like the paper's three text sources (TIPSv2 §3.3).

- `alt_text`: short and noisy like web alt-text: names only some objects, sometimes with
  file-name or stock-photo tokens, now and then with a wrong colour (`P_WRONG_COLOUR`).
- `caption_medium`: PaliGemma-like, one line naming every object with its colour (and
  fill pattern): "a red star and a blue striped circle on a gradient background".
- `caption_long`: Gemini-like, a few sentences with counts, sizes, positions in the
  image, relations between objects ("to the left of", "partly hidden behind") and the
  background; kept under `MAX_LONG_WORDS` words.

Wording comes from several templates and synonyms per field, all drawn from the scene's dice.
Objects are duck-typed `SceneObject`s (see synthetic.py).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from tipsv2_core.data.backgrounds import Background
from tipsv2_core.data.classes import plural
from tipsv2_core.data.palette import OBJECT_COLOURS
from tipsv2_core.data.rand import Dice
from tipsv2_core.data.vocabulary import (
    FILL_WORDS,
    NOISE,
    NUMBERS,
    SIZE_WORDS,
    WHERE,
    background_long,
    background_short,
)

P_WRONG_COLOUR = 0.08
MAX_LONG_WORDS = 56


def _a(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _words(text: str) -> int:
    return len(text.split())


def _noun(rng: Dice, obj: Any, size: bool, fill: bool = True, colour: str | None = None) -> str:
    """ "large red striped star" (without article); each part optional."""
    words = [rng.pick(SIZE_WORDS[obj.size])] if size else []
    words.append(colour or obj.colour)
    if fill:
        words.append(rng.pick(FILL_WORDS[obj.fill]))
    words.append(obj.class_name)
    return " ".join(w for w in words if w)


def alt_text(rng: Dice, objects: list, bg: Background, mode: str = "partial") -> str:
    """Short, partial, sometimes noisy or slightly wrong, like web alt-text.

    mode "partial": one or two of the largest objects, often with colour (and fill);
    "classes": the class of every object, largest first, each class once, nothing else.
    """
    if not objects or rng.random() < 0.04:  # nothing but a file name
        return rng.pick(
            (
                f"img_{rng.integer(10000):04d}",
                f"IMG_{rng.integer(10000):04d}.jpg",
                f"dsc{rng.integer(100000):05d}",
                "image",
            )
        )
    salient = sorted(objects, key=lambda o: -o.pixels)
    names = []
    if mode == "classes":
        names = list(dict.fromkeys(o.class_name for o in salient))
    for o in [] if mode == "classes" else salient[: 1 + rng.integer(min(2, len(objects)))]:
        colour = o.colour
        if rng.random() < P_WRONG_COLOUR:
            colour = rng.pick([c for c in OBJECT_COLOURS if c != o.colour])
        form = rng.integer(4)
        names.append(
            o.class_name
            if form == 0
            else f"{colour} {o.class_name}"
            if form < 3
            else f"{colour} {rng.pick(FILL_WORDS[o.fill])} {o.class_name}".replace("  ", " ")
        )
    text = rng.pick((" and ".join(names), " ".join(names), ", ".join(names)))
    form = rng.integer(7)
    if form == 1:
        text = f"{text} {rng.pick(NOISE)}"
    elif form == 2:
        text = f"{rng.pick(NOISE)} {text}"
    elif form == 3:
        text = f"img_{rng.integer(10000):04d} {text}"
    elif form == 4 and mode != "classes":  # classes mode: no colour word at all
        text = f"{text} on {bg.colours[0]} background"
    elif form == 5:
        text = f"{text} - {rng.pick(NOISE)} {rng.pick(NOISE)}"
    if rng.random() < 0.25:
        text = text.title()
    return text


def caption_medium(rng: Dice, objects: list, bg: Background, colours: bool = True) -> str:
    """Every object with its colour (and fill), identical ones counted, and the background."""
    with_size = rng.random() < 0.3
    groups: Counter[tuple[str, str, str, str]] = Counter(
        (o.size if with_size else "", o.colour, o.fill, o.class_name) for o in objects
    )
    parts = []
    for (size, colour, fill, name), n in groups.items():
        words = [rng.pick(SIZE_WORDS[size]) if size else "", colour, rng.pick(FILL_WORDS[fill])]
        adj = " ".join(w for w in words if w)
        one, many = (" ".join(w for w in (adj, x) if w) for x in (name, plural(name)))
        parts.append(_a(one) if n == 1 else f"{NUMBERS[n]} {many}")
    objs, back = _join(parts), background_short(rng, bg, colours)
    template = rng.pick(
        (
            "{o} on {b}",
            "{o} against {b}",
            "a picture of {o} on {b}",
            "an illustration of {o} over {b}",
            "{B} with {o}",
            "{o}",
            "image of {o} on {b}",
            "{o} drawn on {b}",
            "a drawing of {o} in front of {b}",
            "{o} set on {b}",
        )
    )
    return template.format(o=objs, b=back, B=back)


def _referents(objects: list) -> list[str | None]:
    """A unique short name per object ("the red star", "the large red star") or None."""
    keys = [(o.colour, o.class_name) for o in objects]
    sized = [(o.size, o.colour, o.class_name) for o in objects]
    out: list[str | None] = []
    for o, k, s in zip(objects, keys, sized, strict=True):
        if keys.count(k) == 1:
            out.append(" ".join(w for w in ("the", o.colour, o.class_name) if w))
        elif sized.count(s) == 1:
            out.append(" ".join(w for w in ("the", o.size, o.colour, o.class_name) if w))
        else:
            out.append(None)
    return out


def _relations(rng: Dice, objects: list, size: int) -> list[str]:
    """Sentences relating pairs of objects: occlusion first, then left/right/above/below."""
    ref = _referents(objects)
    occl, spatial = [], []
    for i, o in enumerate(objects):
        for j, px in o.occluded_by.items():
            if ref[i] and ref[j] and px >= 0.08 * (o.pixels + px):
                occl.append(
                    rng.pick(
                        (
                            f"{_cap(ref[i])} is partly hidden behind {ref[j]}.",
                            f"{_cap(ref[j])} partly covers {ref[i]}.",
                            f"{_cap(ref[j])} overlaps {ref[i]}.",
                            f"{_cap(ref[i])} is partially occluded by {ref[j]}.",
                        )
                    )
                )
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            if not (ref[i] and ref[j]):
                continue
            dx = objects[j].centroid[0] - objects[i].centroid[0]
            dy = objects[j].centroid[1] - objects[i].centroid[1]
            a, b = (ref[i], ref[j]) if (dx if abs(dx) >= abs(dy) else dy) > 0 else (ref[j], ref[i])
            if max(abs(dx), abs(dy)) < 0.15 * size:
                continue
            if abs(dx) >= abs(dy):
                spatial.append(
                    rng.pick(
                        (f"{_cap(a)} is to the left of {b}.", f"{_cap(b)} is to the right of {a}.")
                    )
                )
            else:
                spatial.append(rng.pick((f"{_cap(a)} is above {b}.", f"{_cap(b)} is below {a}.")))
    return occl + rng.shuffled(spatial)


def caption_long(rng: Dice, objects: list, bg: Background, size: int, colours: bool = True) -> str:
    """Counts, per-object attributes and positions, relations and the background."""
    n = len(objects)
    things = rng.pick(("objects", "items", "figures"))
    counts = Counter(o.class_name for o in objects)
    summary = _join([_a(c) if k == 1 else f"{NUMBERS[k]} {plural(c)}" for c, k in counts.items()])
    back = background_long(rng, bg, colours)
    if n == 1:
        opening = rng.pick(
            (
                "The image shows a single object.",
                "There is only one object here.",
                "A single object is shown.",
            )
        )
    else:
        opening = rng.pick(
            (
                f"The image shows {NUMBERS[n]} {things}: {summary}.",
                f"There are {NUMBERS[n]} {things} in this picture: {summary}.",
                f"{_cap(NUMBERS[n])} {things} are visible, namely {summary}.",
                f"This picture contains {summary}.",
            )
        )
    full = []
    for o in objects:
        np_ = _noun(rng, o, size=True)
        where = rng.pick(WHERE[o.position])
        full.append(
            rng.pick(
                (
                    f"{_cap(_a(np_))} is {where}.",
                    f"{_cap(where)}, there is {_a(np_)}.",
                    f"{_cap(_a(np_))} sits {where}.",
                    f"{_cap(_a(np_))} can be seen {where}.",
                )
            )
        )
    compact = [f"{_a(_noun(rng, o, size=True))} {rng.pick(WHERE[o.position])}" for o in objects]
    background = rng.pick(
        (f"The background is {back}.", f"Behind them is {back}.", f"Everything sits on {back}.")
    )
    if n == 1:
        background = f"The background is {back}."
    relations = _relations(rng, objects, size)

    def assemble(objs: list[str], rels: list[str], bg_sentence: str) -> str:
        return " ".join([opening, *objs, *rels, bg_sentence]).strip()

    text = assemble(full, relations[:2], background)
    if _words(text) > MAX_LONG_WORDS:
        text = assemble(full, relations[:1], background)
    if _words(text) > MAX_LONG_WORDS:
        text = assemble(full, [], background)
    if _words(text) > MAX_LONG_WORDS:  # many objects: one list sentence instead
        opening = f"{_cap(NUMBERS[n])} {things} on {back}:"
        text = " ".join([opening, _join(compact) + ".", *relations[:1]])
        if _words(text) > MAX_LONG_WORDS:
            text = " ".join([opening, _join(compact) + "."])
        if _words(text) > MAX_LONG_WORDS:
            compact = [
                f"{_a(_noun(rng, o, size=False))} {rng.pick(WHERE[o.position])}" for o in objects
            ]
            text = " ".join([opening, _join(compact) + "."])
        if _words(text) > MAX_LONG_WORDS:
            opening = f"{_cap(NUMBERS[n])} {things} on {background_short(rng, bg, colours)}:"
            text = " ".join([opening, _join(compact) + "."])
    return text


def make_captions(
    rng: Dice,
    objects: list,
    bg: Background,
    size: int,
    alt_mode: str = "partial",
    colours: bool = True,
) -> dict[str, str]:
    """The three captions of a scene: alt_text (`alt_mode`: see alt_text), caption_medium,
    caption_long. With `colours=False` no caption names a colour, of an object or of the
    background (objects are then described by class, size, count, position, relations)."""
    if not colours:
        objects = [dataclasses.replace(o, colour="") for o in objects]
    return {
        "alt_text": alt_text(rng, objects, bg, alt_mode),
        "caption_medium": caption_medium(rng, objects, bg, colours),
        "caption_long": caption_long(rng, objects, bg, size, colours),
    }
