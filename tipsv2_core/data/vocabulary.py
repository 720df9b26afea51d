"""The words of the captions: numbers, positions, sizes, fills, web noise, backgrounds.

Several synonyms or phrasings per item; the caption writer (captions.py) draws one with
the scene's dice each time, so the same scene content is worded in many ways.
"""

from __future__ import annotations

from tipsv2_core.data.backgrounds import Background
from tipsv2_core.data.rand import Dice

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
GRID = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
WHERE = {
    "top left": ("in the top left", "in the upper left corner", "at the top left"),
    "top": ("at the top", "near the top", "in the upper middle"),
    "top right": ("in the top right", "in the upper right corner", "at the top right"),
    "left": ("on the left", "on the left side", "at the left edge"),
    "center": ("in the center", "in the middle", "near the center"),
    "right": ("on the right", "on the right side", "at the right edge"),
    "bottom left": ("in the bottom left", "in the lower left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom", "in the lower middle"),
    "bottom right": ("in the bottom right", "in the lower right corner", "at the bottom right"),
}
SIZE_WORDS = {
    "small": ("small", "little"),
    "medium": ("medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
FILL_WORDS = {
    "solid": ("",),
    "striped": ("striped",),
    "dotted": ("dotted", "polka-dot", "spotted"),
    "checkered": ("checkered", "checked"),
    "outline": ("outlined", "hollow"),
}
NOISE = (
    "stock photo",
    "download",
    "hd wallpaper",
    "free vector",
    "clipart",
    "royalty free",
    "png",
    "illustration",
    "icon set",
    "cute",
    "new",
    "design",
    "art print",
)


def position_of(centroid: tuple[float, float], size: int) -> str:
    """3×3 grid word of a point: "top left", "top", …, "center", …, "bottom right"."""
    col = min(2, int(3 * centroid[0] / size))
    row = min(2, int(3 * centroid[1] / size))
    return GRID[row][col]


# Backgrounds named without their colours (worlds whose captions name no colour).
COLOURLESS_SHORT = {
    "plain": ("a plain background", "a flat background", "a plain backdrop"),
    "gradient": ("a gradient background", "a smooth gradient", "a shaded backdrop"),
    "stripes": ("a striped background", "a background of stripes"),
    "noise": ("a textured background", "a grainy backdrop", "a noisy background"),
    "checker": ("a checkered background", "a checkerboard background"),
}


def background_short(rng: Dice, bg: Background, colours: bool = True) -> str:
    if not colours:
        return rng.pick(COLOURLESS_SHORT[bg.kind])
    c = bg.colours
    options = {
        "plain": (f"a {c[0]} background", f"a plain {c[0]} background", f"a {c[0]} backdrop"),
        "gradient": (
            "a gradient background",
            f"a {c[0]} and {c[-1]} gradient",
            f"a {c[0]}-to-{c[-1]} gradient background",
        ),
        "stripes": (
            "a striped background",
            f"a {c[0]} and {c[-1]} striped background",
            f"{c[0]} and {c[-1]} stripes",
        ),
        "noise": (
            "a textured background",
            f"a noisy {c[0]} background",
            f"a grainy {c[0]} backdrop",
        ),
        "checker": (
            "a checkered background",
            "a checkerboard background",
            f"a {c[0]} and {c[-1]} checkerboard",
        ),
    }
    return rng.pick(options[bg.kind])


def background_long(rng: Dice, bg: Background, colours: bool = True) -> str:
    c, o = bg.colours, bg.orientation
    if not colours:
        extra = {"gradient": (f"a smooth {o} gradient",), "stripes": (f"{o} stripes",)}
        return rng.pick(COLOURLESS_SHORT[bg.kind] + extra.get(bg.kind, ()))
    options = {
        "plain": (
            f"a plain {c[0]} background",
            f"a flat {c[0]} background",
            f"an even {c[0]} backdrop",
        ),
        "gradient": (
            f"a smooth {o} gradient from {c[0]} to {c[-1]}",
            f"a {o} gradient fading from {c[0]} into {c[-1]}",
        ),
        "stripes": (
            f"{o} {c[0]} and {c[-1]} stripes",
            f"a pattern of {o} {c[0]} and {c[-1]} stripes",
        ),
        "noise": (
            f"a grainy {c[0]} texture",
            f"a mottled {c[0]} surface",
            f"a noisy {c[0]} background",
        ),
        "checker": (
            f"a {c[0]} and {c[-1]} checkerboard",
            f"a checkerboard of {c[0]} and {c[-1]} tiles",
        ),
    }
    return rng.pick(options[bg.kind])
