"""The statistics part of a dataset card, accumulated one sample at a time.

Counts per split, class pixel and instance counts, caption lengths (words) per caption
field as 5-word histograms with mean/min/max, image sizes, and rejects by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tipsv2_core.data.classes import IGNORE_INDEX

CAPTION_FIELDS = ("alt_text", "caption_medium", "caption_long")
BIN_WORDS = 5


class CardBuilder:
    """Collects what `to_dict` reports; `add` once per accepted sample."""

    def __init__(self, class_names: Sequence[str], splits: Iterable[str] = ()) -> None:
        self.class_names = list(class_names)
        self.counts: Counter[str] = Counter({s: 0 for s in splits})
        self.pixels: Counter[str] = Counter()
        self.instances: Counter[str] = Counter()
        self.words: dict[str, Counter[int]] = {f: Counter() for f in CAPTION_FIELDS}
        self.sizes: Counter[str] = Counter()
        self.rejects: Counter[str] = Counter()
        self.ignore_pixels = 0

    def add(
        self,
        meta: Mapping[str, Any],
        class_pixels: Mapping[int, int] | None = None,
        instances: Iterable[str] = (),
    ) -> None:
        """One sample: its json `meta`, pixels per class id in its mask, object classes."""
        self.counts[meta["split"]] += 1
        for f in CAPTION_FIELDS:
            self.words[f][len(str(meta.get(f, "")).split())] += 1
        self.sizes[f"{meta['width']}x{meta['height']}"] += 1
        for cid, n in (class_pixels or {}).items():
            if 0 <= cid < len(self.class_names):
                self.pixels[self.class_names[cid]] += int(n)
            elif cid == IGNORE_INDEX:
                self.ignore_pixels += int(n)
        self.instances.update(instances)

    def reject(self, reason: str) -> None:
        self.rejects[reason] += 1

    def _histogram(self, counts: Counter[int]) -> dict[str, Any]:
        total = sum(counts.values())
        hist: Counter[int] = Counter()
        for words, n in counts.items():
            hist[words // BIN_WORDS] += n
        return {
            "bins": {
                f"{b * BIN_WORDS}-{b * BIN_WORDS + BIN_WORDS - 1}": hist[b] for b in sorted(hist)
            },
            "mean": round(sum(w * n for w, n in counts.items()) / total, 3) if total else 0.0,
            "min": min(counts) if counts else 0,
            "max": max(counts) if counts else 0,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": sum(self.counts.values()),
            "counts": dict(self.counts),  # splits in the order given, then as first seen
            "class_names": self.class_names,
            "class_pixel_counts": {c: self.pixels[c] for c in self.class_names},
            "ignore_pixel_count": self.ignore_pixels,
            "class_instance_counts": {
                c: self.instances[c] for c in self.class_names if c != "background"
            },
            "caption_words": {f: self._histogram(self.words[f]) for f in CAPTION_FIELDS},
            "image_sizes": dict(sorted(self.sizes.items())),
            "rejects": dict(sorted(self.rejects.items())),
        }
