"""Exact and near-duplicate detection over a stream of samples (first one seen wins).

Exact duplicates share a content hash (images.content_hash: the same pixels). Near
duplicates have 64-bit perceptual hashes (hashing.phash) at most `max_hamming` bits
apart. Comparing each new hash with every kept one is quadratic; instead the hash is cut
into `max_hamming + 1` disjoint bands and indexed by band value (multi-index hashing): two
hashes within `max_hamming` bits agree exactly on at least one band (pigeonhole), so only
the hashes sharing a band are compared, and none is missed.

Caveat of any DCT hash: pictures with almost no structure (one flat colour) all hash
alike, so they count as near duplicates of each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _bands(bits: int, count: int) -> list[tuple[int, int]]:
    """(shift, mask) of `count` disjoint bands covering `bits` bits, as equal as possible."""
    out, start = [], 0
    for i in range(count):
        width = bits // count + (1 if i < bits % count else 0)
        out.append((start, (1 << width) - 1))
        start += width
    return out


@dataclass
class NearDuplicateIndex:
    """Kept 64-bit hashes, indexed by band for lookups within `max_hamming` bits."""

    max_hamming: int
    bits: int = 64
    _bands: list[tuple[int, int]] = field(init=False)
    _tables: list[dict[int, list[tuple[int, str]]]] = field(init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.max_hamming < self.bits:
            raise ValueError(f"max_hamming must be in 0..{self.bits - 1}, got {self.max_hamming}")
        self._bands = _bands(self.bits, self.max_hamming + 1)
        self._tables = [{} for _ in self._bands]

    def find(self, value: int) -> tuple[str, int] | None:
        """(key, distance) of the closest kept hash within `max_hamming`, or None."""
        best: tuple[str, int] | None = None
        seen: set[int] = set()
        for (shift, mask), table in zip(self._bands, self._tables, strict=True):
            for other, key in table.get((value >> shift) & mask, ()):
                if other in seen:
                    continue
                seen.add(other)
                d = (value ^ other).bit_count()
                if d <= self.max_hamming and (best is None or d < best[1]):
                    best = (key, d)
        return best

    def add(self, value: int, key: str) -> None:
        for (shift, mask), table in zip(self._bands, self._tables, strict=True):
            table.setdefault((value >> shift) & mask, []).append((value, key))


class Deduplicator:
    """Decides, sample by sample, whether an image repeats an earlier kept one."""

    def __init__(self, exact: bool = True, near: bool = True, max_hamming: int = 4) -> None:
        self.exact = exact
        self._hashes: dict[str, str] = {}
        self._near = NearDuplicateIndex(max_hamming) if near else None

    def check(self, key: str, content_hash: str, phash: str) -> tuple[str, str] | None:
        """None (kept, and remembered) or (reason, detail) naming the earlier sample."""
        if self.exact and content_hash in self._hashes:
            return "exact_duplicate", f"same pixels as {self._hashes[content_hash]}"
        value = int(phash, 16)
        if self._near is not None:
            hit = self._near.find(value)
            if hit is not None:
                return "near_duplicate", f"phash {hit[1]} bits from {hit[0]}"
            self._near.add(value, key)
        self._hashes.setdefault(content_hash, key)
        return None
