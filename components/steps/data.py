"""The data stage of the pipeline: curate (or generate) a dataset, validate it, give it a
version, and check the run's plan before any work."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

# The name of the pipeline's synthetic dataset (as the DVC pipeline's data/synth): metrics
# read `eval/<task>/synth-val/...` whichever folder KFP stores the artifact in.
SYNTH_NAME = "synth"


def prepare_dataset(
    out: str,
    sources: Sequence[str],
    *,
    synth_images: int = 4000,
    image_size: int = 112,
    seed: int = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Curates `sources` into a dataset at `out`, or generates a synthetic one when there
    are none (the embedded default: no downloads). Returns counts for the run summary."""
    t0 = time.perf_counter()
    if sources:
        from components.curate import curate

        result = curate(list(sources), out, workers=workers, progress=False)
        doc = {
            "origin": "curated",
            "num_samples": result.num_samples,
            "num_rejected": result.num_rejected,
            "counts": dict(result.counts),
        }
    else:
        from tipsv2_core.data.layout import read_card
        from tipsv2_core.data.synth_dataset import write_synthetic_dataset

        path = write_synthetic_dataset(
            out, synth_images, image_size=image_size, seed=seed, workers=1, progress=False,
            name=SYNTH_NAME,
        )  # fmt: skip
        card = read_card(path)
        doc = {
            "origin": "synthetic",
            "num_samples": int(card["num_samples"]),
            "num_rejected": 0,
            "counts": dict(card["counts"]),
        }
    return {**doc, "seconds": round(time.perf_counter() - t0, 3)}


def check_validation_config(config: Mapping[str, Any] | None) -> None:
    """Raises ValueError naming the bad key when `config` (the pipeline's `validation`
    parameter) is not a valid ValidationConfig: checked before any work."""
    from components.validate import ValidationConfig

    try:
        ValidationConfig.from_dict(config or {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"validation settings: {e}") from None


def validate_dataset(
    data: str, out: str, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The Great Expectations gate on `data`; validation.json/html go into the folder `out`.

    Returns `passed`, the human `summary` (every failed check with examples), the counts
    the gate saw and the report path; a failed gate is a result here, not an exception:
    the DAG branches on it and stops in `stop_pipeline`.
    """
    from components.validate import HTML_FILE, ValidationConfig, validate

    t0 = time.perf_counter()
    result = validate(data, ValidationConfig.from_dict(config or {}), out=out)
    return {
        "passed": bool(result.success),
        "summary": result.message(),
        "failures": [c.describe() for c in result.failures],
        "num_checks": len(result.checks),
        "num_samples": int(result.stats.get("num_samples", 0)),
        "counts": {str(k): int(v) for k, v in (result.stats.get("splits") or {}).items()},
        "report": str(Path(out) / HTML_FILE),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def stop_pipeline(summary: str) -> NoReturn:
    """The failing branch of the validation gate: raises with the GX summary, so the run
    stops (and says why) before anything is versioned or trained."""
    from components.validate import ValidationFailed

    raise ValidationFailed(summary)


def data_version(path: str) -> str:
    """The dataset's version for lineage (`components.versioning.data_version`: its DVC
    md5, else its manifest's sha256); ValueError when `path` is not a dataset."""
    from components.versioning import data_version as version_of

    return version_of(path)


def plan_students(recipe: str, student_variants: Sequence[str]) -> list[str]:
    """The student variants to distil, checked before any work: a typo in a variant or
    recipe name fails the run in seconds instead of after pretraining."""
    from tipsv2_core.models.variants import VARIANTS
    from tipsv2_core.recipes import get_recipe

    get_recipe(recipe)  # raises ValueError with the known names
    students = list(dict.fromkeys(str(v) for v in student_variants))  # unique, in order
    unknown = [v for v in students if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown student variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return students
