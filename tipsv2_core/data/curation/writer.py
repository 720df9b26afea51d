"""The driver side of curation: dedup, shard writing, manifest, rejects and card, atomically.

Results arrive one at a time in a deterministic order (the order of the sources and of
their records). The writer keeps the first of every duplicate group, assigns nothing
else (keys and splits came with the samples), and streams accepted samples into
size-bounded shards per split (`shards/<split>-NNNNNN.tar`, the same format as the
synthetic writer), so memory holds only the small tables. Everything goes into a hidden
sibling of the output directory that replaces it only once complete (`COMPLETE` last), so
a failed run leaves the previous dataset untouched and partial output never looks done.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tipsv2_core.atomic import COMPLETE_FILE, commit_directory, temporary_sibling
from tipsv2_core.data.card import CardBuilder
from tipsv2_core.data.curation.config import CAPTION_FIELDS, CurateConfig
from tipsv2_core.data.curation.dedup import Deduplicator
from tipsv2_core.data.curation.records import Accepted, Rejected
from tipsv2_core.data.layout import (
    CARD_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    REJECTED_FILE,
    REJECTED_SCHEMA,
    SHARDS_DIR,
    DatasetError,
    local_path,
    write_json,
    write_manifest,
)
from tipsv2_core.data.shards import ShardWriter

GENERATOR = "tipsv2_core.data.curation"
GENERATOR_VERSION = 1  # bump when the same inputs and config would give other samples
# The dataset's reject columns (REJECTED_SCHEMA), plus where the record was and what
# exactly was wrong.
REJECTS_SCHEMA = pa.schema(
    [*REJECTED_SCHEMA, pa.field("record", pa.string()), pa.field("detail", pa.string())]
)
TOP_SIZES = 20  # the card lists the most common exact sizes, the rest as "other"


@dataclass(frozen=True)
class SourceInfo:
    label: str
    uri: str
    kind: str  # "folder", "webdataset", "csv", "parquet", "coco"


def _side_bin(side: int) -> str:
    """Power-of-two bins: "0-63", "64-127", …"""
    lo = 64
    while side >= lo * 2:
        lo *= 2
    return "0-63" if side < 64 else f"{lo}-{lo * 2 - 1}"


class CurationWriter:
    """Receives results (`add`), then writes the dataset directory (`commit`).

    Use as a context manager: leaving with an exception deletes the temporary directory
    and leaves `out` as it was.
    """

    def __init__(
        self, out: str | os.PathLike, cfg: CurateConfig, sources: Sequence[SourceInfo]
    ) -> None:
        self.path = local_path(out)
        complete = (self.path / COMPLETE_FILE).is_file()
        if (
            self.path.exists()
            and not complete
            and (not self.path.is_dir() or any(self.path.iterdir()))
        ):
            raise DatasetError(f"{self.path}: exists and is not a dataset; refusing to replace it")
        self.cfg = cfg
        self.sources = list(sources)
        self.tmp = temporary_sibling(self.path)
        self.dedup = Deduplicator(cfg.dedup.exact, cfg.dedup.near, cfg.dedup.max_hamming)
        self.writers: dict[str, ShardWriter] = {}
        self.rows: list[dict[str, Any]] = []
        self.rejects: list[dict[str, str]] = []
        self.keys: set[str] = set()
        self.card = CardBuilder([], [s for s, r in cfg.splits.items() if r > 0])
        self.by_source: dict[str, Counter[str]] = {s.label: Counter() for s in sources}
        self.rejects_by_source: dict[str, Counter[str]] = {s.label: Counter() for s in sources}
        self.caption_sources: dict[str, Counter[str]] = {f: Counter() for f in CAPTION_FIELDS}
        self.sides: dict[str, Counter[str]] = {"long": Counter(), "short": Counter()}
        self.classes: Counter[str] = Counter()

    # ------------------------------------------------------------------------- results

    def _reject(self, r: Rejected) -> None:
        self.rejects.append(r.row())
        self.card.reject(r.reason)
        self.rejects_by_source.setdefault(r.source, Counter())[r.reason] += 1

    def add(self, result: Accepted | Rejected) -> bool:
        """Takes one result; True when it became a sample of the dataset."""
        if result.key in self.keys:
            why = "another record of this source has the same name"
            self._reject(Rejected(result.key, result.source, result.record, "duplicate_key", why))
            return False
        self.keys.add(result.key)
        if isinstance(result, Rejected):
            self._reject(result)
            return False
        dup = self.dedup.check(result.key, result.content_hash, result.phash)
        if dup is not None:
            self._reject(Rejected(result.key, result.source, result.record, *dup))
            return False
        meta = result.meta
        split = meta["split"]
        if split not in self.writers:
            self.writers[split] = ShardWriter(
                self.tmp / SHARDS_DIR, split, self.cfg.shard_max_samples, self.cfg.shard_max_bytes
            )
        shard = self.writers[split].write(result.key, result.files)
        self.rows.append({**meta, "shard": f"{SHARDS_DIR}/{shard}"})
        self.card.add(meta, None, meta["classes"])
        self.classes.update(meta["classes"])
        self.by_source.setdefault(result.source, Counter())[split] += 1
        for f in CAPTION_FIELDS:
            self.caption_sources[f][meta["caption_sources"][f]] += 1
        w, h = meta["width"], meta["height"]
        self.sides["long"][_side_bin(max(w, h))] += 1
        self.sides["short"][_side_bin(min(w, h))] += 1
        return True

    def add_all(self, results: Iterable[Accepted | Rejected]) -> None:
        for r in results:
            self.add(r)

    # ---------------------------------------------------------------------------- card

    def _card(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        self.card.class_names = sorted(self.classes)
        stats = self.card.to_dict()
        for unused in ("class_pixel_counts", "ignore_pixel_count"):  # no label maps here
            stats.pop(unused, None)
        sizes = Counter(stats.pop("image_sizes"))
        top = dict(sizes.most_common(TOP_SIZES))
        other = sum(sizes.values()) - sum(top.values())
        sources = []
        for s in self.sources:
            accepted = self.by_source.get(s.label, Counter())
            rejected = self.rejects_by_source.get(s.label, Counter())
            sources.append(
                {
                    "label": s.label,
                    "uri": s.uri,
                    "kind": s.kind,
                    "records": sum(accepted.values()) + sum(rejected.values()),
                    "accepted": sum(accepted.values()),
                    "rejected": sum(rejected.values()),
                    "counts": dict(sorted(accepted.items())),
                    "rejects": dict(sorted(rejected.items())),
                }
            )
        return {
            "name": self.path.name,
            "format_version": FORMAT_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": "curated",
            "generator": {
                "name": GENERATOR,
                "version": GENERATOR_VERSION,
                "config": self.cfg.to_dict(),
            },
            "splits": dict(self.cfg.splits),
            "sources": sources,
            "manifest_columns": MANIFEST_SCHEMA.names,
            **stats,
            "num_rejected": len(self.rejects),
            "image_sizes": {**top, **({"other": other} if other else {})},
            "image_side_histogram": {
                k: dict(sorted(c.items(), key=lambda kv: int(kv[0].split("-")[0])))
                for k, c in self.sides.items()
            },
            "caption_sources": {f: dict(c) for f, c in self.caption_sources.items()},
            **extra,
        }

    # -------------------------------------------------------------------------- commit

    def commit(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Closes the shards, writes manifest, rejects and card, and renames into place.

        Returns the card. Raises DatasetError when nothing was accepted: an empty dataset
        is never committed over a previous one (the rejects are still written next to
        `out`, as `<out>.rejected.parquet`, for inspection).
        """
        shards = {s: [f"{SHARDS_DIR}/{p.name}" for p in w.close()] for s, w in self.writers.items()}
        self.rows.sort(key=lambda row: row["split"])  # stable: arrival order within a split
        rejected = pa.Table.from_pylist(self.rejects, schema=REJECTS_SCHEMA)
        if not self.rows:
            spare = self.path.with_name(f"{self.path.name}.rejected.parquet")
            pq.write_table(rejected, spare)
            raise DatasetError(
                f"{self.path}: every one of {len(self.rejects)} records was rejected "
                f"({dict(self.card.rejects.most_common(5))}); nothing written (rejects: {spare})"
            )
        write_manifest(self.tmp / MANIFEST_FILE, self.rows)
        pq.write_table(rejected, self.tmp / REJECTED_FILE)
        card = self._card({"shards": dict(sorted(shards.items())), **(extra or {})})
        write_json(self.tmp / CARD_FILE, card)
        commit_directory(self.tmp, self.path)
        return card

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> CurationWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()
