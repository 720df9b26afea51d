"""A short human-readable summary of a curated dataset, from its card."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tipsv2_core.data.curation.records import REASONS


def summary_text(card: Mapping[str, Any], out: str, seconds: float | None = None) -> str:
    """Counts per split and source, rejects by reason, caption origins, timing."""
    n, rejected = card["num_samples"], card.get("num_rejected", 0)
    total = n + rejected
    splits = " · ".join(f"{s} {c:,}" for s, c in card["counts"].items())
    lines = [f"curated {n:,} of {total:,} records into {out}  ({splits})"]
    seconds = seconds or (card.get("timing") or {}).get("seconds")
    if seconds:
        lines[0] += f"  in {seconds:.1f} s ({total / seconds:.0f} records/s)"
    sources = card.get("sources") or []
    if sources:
        width = max(12, *(len(s["label"]) for s in sources))
        head = f"  {'source':<{width}} {'kind':<10} {'records':>8} {'kept':>8} {'rejected':>8}"
        lines.append(head)
        for s in sources:
            lines.append(
                f"  {s['label']:<{width}} {s['kind']:<10} {s['records']:>8,} "
                f"{s['accepted']:>8,} {s['rejected']:>8,}"
            )
    rejects = card.get("rejects") or {}
    if rejects:
        lines.append(f"rejected {rejected:,} ({rejected / max(total, 1):.1%}):")
        for reason, count in sorted(rejects.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason:<20} {count:>8,}  {REASONS.get(reason, '')}")
    filled = [
        f"{f} {c:,} from {origin}"
        for f, origins in (card.get("caption_sources") or {}).items()
        for origin, c in origins.items()
        if origin != "source"
    ]
    if filled:
        lines.append("captions filled: " + ", ".join(filled))
    if card.get("class_names"):
        lines.append(f"classes {len(card['class_names'])}: " + ", ".join(card["class_names"][:12]))
    return "\n".join(lines)
