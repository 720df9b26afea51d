"""The curation step: `curate(sources, out, config) -> CurateResult`.

1. Config and sources are checked and planned on the driver (plan.py); nothing is read
   or written before every source is known to be readable and to fit the config.
2. The per-record work (read, decode, clean, caption, hash) runs on Ray Data, or in one
   local loop with `workers=0` (execute.py).
3. The driver deduplicates, writes shards, manifest, rejects and card into a temporary
   directory and renames it into place (tipsv2_core.data.curation.writer). An `s3://`
   output is staged locally and uploaded as a new version of the prefix, which its
   COMPLETE then names (components.s3_publish): readers see the previous dataset, whole,
   until the new one is, and a run that fails on the way leaves the previous one as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from components import storage
from components.curate.execute import ray_session, run_local, run_ray
from components.curate.plan import plan_sources
from components.datasets import publish
from tipsv2_core.data.curation.config import CurateConfig, CurateConfigError
from tipsv2_core.data.curation.summary import summary_text
from tipsv2_core.data.curation.writer import CurationWriter
from tipsv2_core.schema import parse_mapping

ConfigLike = CurateConfig | Mapping[str, Any] | str | os.PathLike[str] | None


@dataclass(frozen=True)
class CurateResult:
    """What a curation run produced; `to_json` is the CLI's last line."""

    out: str
    num_samples: int
    num_rejected: int
    counts: dict[str, int]  # samples per split
    rejects: dict[str, int]  # rejects per reason
    sources: list[dict[str, Any]]  # per source: label, uri, kind, records, accepted, …
    seconds: float
    summary: str
    card: dict[str, Any] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "num_samples": self.num_samples,
            "num_rejected": self.num_rejected,
            "counts": self.counts,
            "rejects": self.rejects,
            "sources": {
                s["label"]: {"accepted": s["accepted"], "rejected": s["rejected"]}
                for s in self.sources
            },
            "seconds": round(self.seconds, 3),
        }


def load_config(config: ConfigLike) -> CurateConfig:
    """A CurateConfig from itself, a mapping, or a JSON / YAML file (path or URI)."""
    if config is None:
        return CurateConfig()
    if isinstance(config, CurateConfig):
        return config
    if isinstance(config, Mapping):
        return CurateConfig.from_dict(config)
    where = os.fspath(config)
    try:
        text = storage.read_bytes(where).decode("utf-8")
    except (storage.StorageError, OSError, UnicodeDecodeError) as e:
        raise CurateConfigError(f"cannot read config {where}: {e}") from None
    doc = parse_mapping(text, where, error=CurateConfigError)
    try:
        return CurateConfig.from_dict(doc)
    except CurateConfigError as e:
        raise CurateConfigError(f"{where}: {e}") from None


def curate(
    sources: Sequence[str],
    out: str,
    config: ConfigLike = None,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
) -> CurateResult:
    """Curates `sources` (URIs) into a dataset at `out` (path, file:// or s3:// URI).

    `workers` Ray workers (a local Ray with that many CPUs unless Ray is already running
    or `ray_address` names a cluster); `workers=0` runs everything in this process.
    Raises CurateConfigError (a ValueError) for a bad config or source before any work,
    and DatasetError when no record survives; bad records never stop the run.
    """
    t0 = time.perf_counter()
    cfg = load_config(config)
    if workers < 0 or (workers == 0 and ray_address):
        raise CurateConfigError(f"workers must be >= 1 with Ray, or 0 for none; got {workers}")
    uris = [os.fspath(s) for s in sources]
    try:
        remote_out = storage.parse(out).is_s3
    except ValueError as e:
        raise CurateConfigError(f"--out {e}") from None
    if remote_out or any(u.startswith("s3://") for u in uris):
        from components.settings import configure

        configure()  # S3 credentials of the local stack, before Ray workers inherit the env
    plans = plan_sources(uris, cfg, storage.default_storage())
    tasks = [t for p in plans for t in p.tasks]
    staging = Path(tempfile.mkdtemp(prefix="tipsv2-curate-")) if remote_out else None
    name = storage.parse(out).key.rsplit("/", 1)[-1] or "dataset"
    target = staging / name if staging else out
    try:
        with CurationWriter(target, cfg, [p.info for p in plans]) as writer:
            bar = tqdm(
                total=None if any(t.kind == "tar" for t in tasks) else len(tasks),
                disable=not progress,
                unit="rec",
                desc="curate",
            )
            if workers == 0:
                results = run_local(tasks, cfg)
                for r in results:
                    writer.add(r)
                    bar.update()
            else:
                with ray_session(workers, ray_address):
                    for r in run_ray(tasks, cfg, workers):
                        writer.add(r)
                        bar.update()
            bar.close()
            seconds = time.perf_counter() - t0
            executor = "local" if workers == 0 else "ray"
            timing = {"seconds": round(seconds, 3), "workers": workers, "executor": executor}
            card = writer.commit({"timing": timing})
        if staging is not None:
            publish(writer.path, out)  # a new version; COMPLETE switches readers last
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return CurateResult(
        out=out,
        num_samples=card["num_samples"],
        num_rejected=card["num_rejected"],
        counts={k: v for k, v in card["counts"].items()},
        rejects=dict(card["rejects"]),
        sources=card["sources"],
        seconds=seconds,
        summary=summary_text(card, out, seconds),
        card=card,
    )
