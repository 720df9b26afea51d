"""Which caption each CLS token is contrasted with (TIPSv2 §3.5, Tab. 13).

A strategy maps CLS1 (and optionally CLS2) to the caption fields it may be paired with;
for every sample one field is drawn uniformly from the list. The default is TIPSv2's
multi-granularity scheme: CLS1 ↔ alt-text, CLS2 ↔ {PaliGemma-like, Gemini-like}.
"""

from __future__ import annotations

import numpy as np

ALT, MEDIUM, LONG = "alt_text", "caption_medium", "caption_long"

# name: (fields for CLS1, fields for CLS2 or None for a one-CLS model)
STRATEGIES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "two_cls_multi": ((ALT,), (MEDIUM, LONG)),  # TIPSv2
    "two_cls_medium": ((ALT,), (MEDIUM,)),  # TIPS v1: 2 CLS (web / PaliGemma)
    "one_cls_multi": ((ALT, MEDIUM, LONG), None),  # 1 CLS (web, PaliGemma, Gemini)
    "one_cls_medium": ((ALT, MEDIUM), None),  # 1 CLS (web, PaliGemma)
    "alt_only": ((ALT,), None),  # plain CLIP on web alt-text
    "long_only": ((LONG,), None),  # Gemini-like captions only
}


def sample_captions(meta: dict, strategy: str, rng: np.random.Generator) -> tuple[str, str | None]:
    """(text for CLS1, text for CLS2 or None) of one sample's caption fields."""
    try:
        cls1_fields, cls2_fields = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(
            f"unknown caption strategy {strategy!r}; one of {list(STRATEGIES)}"
        ) from None

    def pick(fields: tuple[str, ...]) -> str:
        name = fields[int(rng.integers(len(fields)))] if len(fields) > 1 else fields[0]
        text = meta.get(name)
        if not isinstance(text, str):
            raise ValueError(f"sample {meta.get('key')!r} has no {name!r} caption")
        return text

    return pick(cls1_fields), pick(cls2_fields) if cls2_fields else None
