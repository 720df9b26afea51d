"""The validation gate's thresholds: `ValidationConfig`, from code or a JSON/YAML file."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tipsv2_core.data.card import CAPTION_FIELDS
from tipsv2_core.schema import build, parse_mapping

# Characters, not words: a caption is stored and tokenised as text; these bounds catch
# empty strings and runaway generations (the text encoder reads 64 tokens of it anyway).
DEFAULT_CAPTION_MAX_CHARS = {"alt_text": 1000, "caption_medium": 2000, "caption_long": 8000}


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the gate. Every field can be set from a JSON/YAML file (`load_config`).

    Rates are fractions in [0, 1]. `expected_splits` defaults to the ratios the card
    records (`splits`, or the generator's `splits`); `class_coverage` None means "when the
    data is labelled" (the card names classes and some samples carry labels).
    """

    min_samples: int = 1
    caption_fields: tuple[str, ...] = CAPTION_FIELDS
    caption_min_chars: int = 1
    caption_max_chars: Mapping[str, int] = field(
        default_factory=lambda: dict(DEFAULT_CAPTION_MAX_CHARS)
    )
    min_image_side: int = 16
    max_image_side: int = 8192
    max_aspect_ratio: float = 8.0
    expected_splits: Mapping[str, float] | None = None
    # A split's share must lie within max(split_tolerance, split_sigmas * binomial sd) of
    # its ratio: hash-assigned splits of a small dataset wander by a few sd, a large one
    # must match to the absolute tolerance.
    split_tolerance: float = 0.02
    split_sigmas: float = 4.0
    max_reject_rate: float = 0.5
    max_duplicate_rate: float = 0.25
    duplicate_reasons: tuple[str, ...] = ("duplicate",)  # reject reasons that count as such
    max_duplicate_image_rate: float = 0.0  # manifest rows whose sha256 another row shares
    class_coverage: bool | None = None
    min_class_samples: int = 1
    examples: int = 5  # offending rows reported per failed check
    check_shards: bool = True  # open every shard the manifest names (shard_check)
    decode_per_shard: int = 2  # samples fully decoded per shard, besides the first and last
    min_distinct_captions: int = 2  # per caption field (capped at the number of samples)

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_reject_rate", "max_duplicate_rate", "max_duplicate_image_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1]")
        if not 0 < self.min_image_side <= self.max_image_side:
            problems.append("need 0 < min_image_side <= max_image_side")
        if self.max_aspect_ratio < 1:
            problems.append("max_aspect_ratio must be >= 1")
        if self.caption_min_chars < 0 or self.min_samples < 0 or self.min_class_samples < 0:
            problems.append("caption_min_chars, min_samples, min_class_samples must be >= 0")
        if self.decode_per_shard < 0 or self.min_distinct_captions < 0:
            problems.append("decode_per_shard, min_distinct_captions must be >= 0")
        if self.split_tolerance < 0 or self.split_sigmas < 0 or self.examples < 1:
            problems.append("split_tolerance, split_sigmas must be >= 0 and examples >= 1")
        missing = [f for f in self.caption_fields if f not in self.caption_max_chars]
        if missing:
            problems.append(f"caption_max_chars lacks {missing}")
        for f, n in self.caption_max_chars.items():
            if n < self.caption_min_chars:
                problems.append(f"caption_max_chars[{f!r}] is below caption_min_chars")
        if self.expected_splits is not None and (
            any(v < 0 for v in self.expected_splits.values())
            or abs(sum(self.expected_splits.values()) - 1.0) > 1e-6
        ):
            problems.append("expected_splits must be non-negative ratios that sum to 1")
        if problems:
            raise ValueError("invalid validation config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ValidationConfig:
        """A config from a mapping (a parsed file); unknown keys and bad types are errors
        naming the key (tipsv2_core/schema.py). Two shorthands: `caption_max_chars: N`
        bounds every caption field, and `class_coverage: auto` is None."""
        doc = dict(doc)
        bounds = doc.get("caption_max_chars")
        if isinstance(bounds, int) and not isinstance(bounds, bool):
            doc["caption_max_chars"] = dict.fromkeys(
                doc.get("caption_fields", CAPTION_FIELDS), bounds
            )
        elif isinstance(bounds, Mapping):  # the fields it leaves out keep their defaults
            doc["caption_max_chars"] = {**DEFAULT_CAPTION_MAX_CHARS, **bounds}
        coverage = doc.get("class_coverage")
        if coverage == "auto":
            doc["class_coverage"] = None
        elif coverage is not None and not isinstance(coverage, bool):
            raise ValueError(f"class_coverage: expected true, false or auto, got {coverage!r}")
        return build(cls, doc, what="validation settings", error=ValueError)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping that `from_dict` reads back."""
        doc = dataclasses.asdict(self)
        for name in ("caption_fields", "duplicate_reasons"):
            doc[name] = list(doc[name])
        doc["caption_max_chars"] = dict(self.caption_max_chars)
        if self.expected_splits is not None:
            doc["expected_splits"] = dict(self.expected_splits)
        return doc


def load_config(path: str | os.PathLike[str], section: str | None = None) -> ValidationConfig:
    """Thresholds from a JSON or YAML file, optionally from one top-level `section` of it
    (so `params.yaml` of the DVC pipeline can hold them under `validate:`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such validation config") from None
    doc = parse_mapping(text, str(p), section=section, error=ValueError)
    return ValidationConfig.from_dict(doc)
