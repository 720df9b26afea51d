"""Curation of image-text data into the dataset format: the pure rules.

Pillow/numpy/pyarrow only; where the work runs (Ray Data, one process) and where bytes
come from (paths, S3) is decided by `components.curate`.

- `config`: CurateConfig and its rule families (images, captions, dedup, columns, …)
- `records`: raw records, accepted samples, rejects and their reason codes; sample keys
- `sources`, `tarsamples`, `tasks`: source layouts parsed from listings and bytes
- `images`, `captions`, `captioners`: the per-record rules; `process` chains them
- `dedup`: exact and near duplicates; `writer`: shards, manifest, rejects, card, atomically
- `summary`: the human-readable report
"""

from tipsv2_core.data.curation.config import CurateConfig, CurateConfigError
from tipsv2_core.data.curation.process import process_record
from tipsv2_core.data.curation.records import REASONS, Accepted, RawRecord, Rejected
from tipsv2_core.data.curation.writer import CurationWriter, SourceInfo

__all__ = [
    "REASONS",
    "Accepted",
    "CurateConfig",
    "CurateConfigError",
    "CurationWriter",
    "RawRecord",
    "Rejected",
    "SourceInfo",
    "process_record",
]
