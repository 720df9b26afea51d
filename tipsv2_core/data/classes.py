"""The label space of the synthetic dataset: class id = index in `CLASS_NAMES`.

Id 0 is the background. Label maps use `IGNORE_INDEX` (255) for pixels that belong to no
class: in synthetic scenes these are the small distractor marks ("clutter"), which are
neither background nor one of the named objects.
"""

from __future__ import annotations

BACKGROUND = "background"
IGNORE_INDEX = 255

CLASS_NAMES: tuple[str, ...] = (
    BACKGROUND,
    # simple shapes
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "cross",
    "hexagon",
    "diamond",
    "crescent",
    "ring",
    "arrow",
    "lightning bolt",
    # object silhouettes
    "house",
    "tree",
    "car",
    "fish",
    "cat",
    "bird",
    "umbrella",
    "key",
    "cup",
    "boat",
    "cloud",
    "flower",
    "mushroom",
    "butterfly",
)

CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
NUM_CLASSES = len(CLASS_NAMES)  # including the background

# Irregular plurals; every other name takes "s" or "es" (see `plural`).
_PLURALS = {"fish": "fish", "cross": "crosses", "butterfly": "butterflies"}


def plural(name: str) -> str:
    """English plural of a class name ("lightning bolt" -> "lightning bolts")."""
    if name in _PLURALS:
        return _PLURALS[name]
    return name + ("es" if name.endswith(("s", "x", "sh", "ch")) else "s")
