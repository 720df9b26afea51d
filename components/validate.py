"""The data validation gate: Great Expectations suites on a dataset's manifest and card.

This is the only module that imports `great_expectations` (GX stays behind one small
adapter, as every service does: docs/architecture.md, "Layers"); it is imported lazily,
inside `validate`, because it costs ~3 s and the CLI must stay quick. Everything else sees
plain dataclasses: `ValidationConfig` (thresholds, from code or a JSON/YAML file) in,
`ValidationResult` (checks, failures with example rows, where the report was written) out.

A dataset (docs/architecture.md, "Sample schema") is judged on three in-memory pandas
batches, each with its own ExpectationSuite and ValidationDefinition in an ephemeral GX context:

- **manifest**, one row per sample: row count (vs. the card), keys present and unique,
  splits known, captions present and within length bounds, image sides and aspect ratio
  within bounds, and no exact duplicate images (sha256). Failures name the sample keys.
- **classes**, one row per class, for labelled data: every class of the card covered by
  at least `min_class_samples` samples, and no label the card does not declare.
- **shards**, one row per shard the manifest names (components.shard_check): the shard
  exists, is a readable tar that is not truncated, holds exactly the manifest's samples
  (count and keys), each with its image and JSON, and a few of them decode.
- **summary**, one row of dataset-level figures: each split's share of the samples within
  a tolerance of its expected ratio, the reject and duplicate rates of curation
  (from `rejected.parquet`, else the card's reject counts) below their thresholds, and
  at least `min_distinct_captions` different texts in each caption field (a caption
  set that is all one string teaches the text tower nothing).

`validate` writes `validation.json` (every check, the failures with examples, and GX's
own result documents) and `validation.html` (a summary table) into the output folder,
`<dataset>/validation` unless told otherwise. The thresholds live in
`components/validation_config.py`, the results and the report in
`components/validation_report.py`; this module builds the batches and runs GX. The CLI
(`tipsv2 data validate`) exits non-zero on failure so a pipeline stops before training.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from components import storage
from components.datasets import dataset_metadata
from components.settings import disable_telemetry
from components.validation_config import ValidationConfig, load_config
from components.validation_report import (
    HTML_FILE,
    RESULT_FILE,
    CheckResult,
    ValidationFailed,
    ValidationResult,
    write_report,
)
from tipsv2_core.data.layout import REJECTED_FILE, read_card, read_manifest

# The gate's public names, wherever they are defined (callers import them from here).
__all__ = [
    "HTML_FILE",
    "RESULT_FILE",
    "CheckResult",
    "ValidationConfig",
    "ValidationFailed",
    "ValidationResult",
    "load_config",
    "validate",
]

DEFAULT_OUT = "validation"  # below the dataset, unless `out` says otherwise
BATCHES = ("manifest", "classes", "shards", "summary")
# The column that names an offending row in each batch's failure examples.
INDEX_COLUMN = {"manifest": "key", "classes": "class", "shards": "shard"}
NO_CLASS = "background"  # the label-map background is never a caption class


# ---------------------------------------------------------------------------------------
# the batches and their expectations (plain data: GX enters only in _run_suites)


@dataclass(frozen=True)
class _Check:
    batch: str
    expectation: str  # a class name of great_expectations.expectations
    kwargs: dict[str, Any]
    description: str


@dataclass
class _Batches:
    frames: dict[str, Any]  # batch name -> pandas.DataFrame
    checks: list[_Check]
    stats: dict[str, Any]
    # summary column -> rows that explain a failure of its check (GX has no row keys there)
    summary_examples: dict[str, list[dict[str, Any]]]


def _expected_splits(card: Mapping[str, Any], cfg: ValidationConfig) -> dict[str, float] | None:
    if cfg.expected_splits is not None:
        return dict(cfg.expected_splits)
    for splits in (card.get("splits"), (card.get("generator") or {}).get("splits")):
        if isinstance(splits, Mapping) and splits:
            return {str(k): float(v) for k, v in splits.items()}
    return None


def _rejects(root: Path, card: Mapping[str, Any]) -> tuple[Counter[str], dict[str, str]] | None:
    """(rejects per reason, the first rejected key of each reason) from rejected.parquet,
    else the card's reject counts; None when neither records rejects."""
    path = root / REJECTED_FILE
    if path.is_file():
        table = pq.read_table(path)
        if "reason" not in table.column_names:
            raise ValueError(f"{path}: no 'reason' column")
        reasons = [str(r) for r in table.column("reason").to_pylist()]
        keys = table.column("key").to_pylist() if "key" in table.column_names else []
        first: dict[str, str] = {}
        for reason, key in zip(reasons, keys, strict=False):
            first.setdefault(reason, key)
        return Counter(reasons), first
    if isinstance(card.get("rejects"), Mapping):
        return Counter({str(k): int(v) for k, v in card["rejects"].items()}), {}
    return None


class _Builder:
    """Collects the checks and the figures of the three batches of one dataset."""

    def __init__(self, cfg: ValidationConfig) -> None:
        self.cfg = cfg
        self.checks: list[_Check] = []
        self.summary: dict[str, list[float]] = {}
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.stats: dict[str, Any] = {}

    def check(self, batch: str, expectation: str, description: str, **kwargs: Any) -> None:
        self.checks.append(_Check(batch, expectation, kwargs, description))

    def figure(
        self,
        column: str,
        value: float,
        lo: float,
        hi: float,
        description: str,
        examples: list[dict[str, Any]],
    ) -> None:
        """A dataset-level figure: one column of the summary batch and its bounds."""
        self.summary[column] = [value]
        self.examples[column] = examples
        self.check(
            "summary",
            "ExpectColumnValuesToBeBetween",
            description,
            column=column,
            min_value=lo,
            max_value=hi,
        )

    def manifest(self, card: Mapping[str, Any], splits: Sequence[str]) -> None:
        """Row-level checks of the manifest batch."""
        cfg, check = self.cfg, self.check
        check(
            "manifest",
            "ExpectTableRowCountToBeBetween",
            "enough samples",
            min_value=cfg.min_samples,
        )
        check(
            "manifest",
            "ExpectTableRowCountToEqual",
            "one manifest row per sample the card counts",
            value=int(card["num_samples"]),
        )
        check("manifest", "ExpectColumnValuesToNotBeNull", "every sample has a key", column="key")
        check("manifest", "ExpectColumnValuesToBeUnique", "sample keys are unique", column="key")
        check(
            "manifest", "ExpectColumnValuesToNotBeNull", "every sample has a split", column="split"
        )
        check(
            "manifest",
            "ExpectColumnValuesToBeInSet",
            "splits are the expected ones",
            column="split",
            value_set=sorted(splits),
        )
        for f in cfg.caption_fields:
            lo, hi = cfg.caption_min_chars, cfg.caption_max_chars[f]
            check("manifest", "ExpectColumnValuesToNotBeNull", f"{f} is present", column=f)
            check(
                "manifest",
                "ExpectColumnValueLengthsToBeBetween",
                f"{f} has {lo}..{hi} characters",
                column=f,
                min_value=lo,
                max_value=hi,
            )
        for side in ("width", "height"):
            lo, hi = cfg.min_image_side, cfg.max_image_side
            check(
                "manifest", "ExpectColumnValuesToNotBeNull", f"image {side} is known", column=side
            )
            check(
                "manifest",
                "ExpectColumnValuesToBeBetween",
                f"image {side} is {lo}..{hi} px",
                column=side,
                min_value=lo,
                max_value=hi,
            )
        check(
            "manifest",
            "ExpectColumnValuesToBeBetween",
            f"long side / short side is at most {cfg.max_aspect_ratio:g}",
            column="aspect_ratio",
            min_value=1.0,
            max_value=cfg.max_aspect_ratio,
        )
        check(
            "manifest",
            "ExpectColumnValuesToBeUnique",
            f"at most {cfg.max_duplicate_image_rate:.1%} of samples share their image (sha256)",
            column="sha256",
            mostly=1.0 - cfg.max_duplicate_image_rate,
        )

    def classes(self, card: Mapping[str, Any], labels: Sequence[Sequence[str] | None]) -> Any:
        """The classes batch (None when coverage is not checked)."""
        import pandas as pd

        cfg = self.cfg
        declared = [c for c in card.get("class_names") or [] if c != NO_CLASS]
        per_class: Counter[str] = Counter()
        for row in labels:
            per_class.update(set(row or ()))
        labelled = bool(declared) and any(labels)
        coverage = labelled if cfg.class_coverage is None else cfg.class_coverage
        self.stats.update(
            labelled=labelled,
            class_coverage_checked=bool(coverage),
            classes_without_samples=[c for c in declared if per_class[c] == 0],
        )
        if not coverage:
            return None
        names = declared + sorted(set(per_class) - set(declared) - {NO_CLASS})
        self.check(
            "classes",
            "ExpectColumnValuesToBeBetween",
            f"every class of the card is in at least {cfg.min_class_samples} samples",
            column="samples",
            min_value=cfg.min_class_samples,
        )
        self.check(
            "classes",
            "ExpectColumnValuesToBeInSet",
            "every label is a class of the card",
            column="declared",
            value_set=[True],
        )
        return pd.DataFrame(
            {
                "class": names,
                "samples": [per_class[c] for c in names],
                "declared": [c in declared for c in names],
            }
        )

    def shards(self, rows: list[dict[str, str]]) -> Any:
        """The shards batch: one row per shard with its problem ("" when none)."""
        import pandas as pd

        self.stats.update(
            shards=len(rows), shards_with_problems=sum(1 for r in rows if r["problem"])
        )
        self.check(
            "shards",
            "ExpectColumnValuesToBeInSet",
            "every shard the manifest names exists, is whole, holds exactly its samples "
            "and decodes",
            column="problem",
            value_set=[""],
        )
        return pd.DataFrame(rows, columns=["shard", "problem"])

    def distinct_captions(self, manifest: Any, n: int) -> None:
        """A figure per caption field: how many different texts it holds."""
        for f in self.cfg.caption_fields:
            values = manifest[f].dropna()
            counts = values.value_counts()
            top = [{"caption": str(text), "count": int(c)} for text, c in counts.head(3).items()]
            lo = min(self.cfg.min_distinct_captions, n)
            self.figure(
                f"distinct_{f}",
                float(len(counts)),
                float(lo),
                float(max(n, lo)),
                f"{f} holds at least {lo} different texts",
                top,
            )

    def split_shares(self, counts: Counter[str], n: int, expected: Mapping[str, float]) -> None:
        cfg = self.cfg
        table = [  # the example rows of every split check: all splits, missing ones too
            {
                "split": s,
                "count": counts[s],
                "fraction": round(counts[s] / max(n, 1), 4),
                "expected": expected.get(s),
            }
            for s in sorted(set(expected) | set(counts))
        ]
        for split, ratio in expected.items():
            sd = math.sqrt(ratio * (1 - ratio) / max(n, 1))
            tol = max(cfg.split_tolerance, cfg.split_sigmas * sd)
            lo, hi = round(max(0.0, ratio - tol), 6), round(min(1.0, ratio + tol), 6)
            self.figure(
                f"split_fraction_{split}",
                counts[split] / n if n else 0.0,
                lo,
                hi,
                f"split {split!r} holds {lo:.3f}..{hi:.3f} of the samples (ratio {ratio:g})",
                table,
            )

    def reject_rates(self, by_reason: Counter[str], first_key: Mapping[str, str], n: int) -> None:
        cfg = self.cfg
        total = n + sum(by_reason.values())  # curation's input: accepted + rejected
        wanted = tuple(r.lower() for r in cfg.duplicate_reasons)
        dup_reasons = [r for r in by_reason if any(d in r.lower() for d in wanted)]

        def examples(reasons: Sequence[str]) -> list[dict[str, Any]]:
            # One row per reason, most frequent first: its count and a rejected key.
            ranked = sorted(reasons, key=lambda r: (-by_reason[r], r))[: cfg.examples]
            return [
                {"reason": r, "count": by_reason[r]}
                | ({"key": first_key[r]} if r in first_key else {})
                for r in ranked
            ]

        reject_rate = sum(by_reason.values()) / total if total else 0.0
        dup_rate = sum(by_reason[r] for r in dup_reasons) / total if total else 0.0
        self.stats.update(rejects=dict(by_reason), reject_rate=reject_rate, duplicate_rate=dup_rate)
        self.figure(
            "reject_rate",
            reject_rate,
            0.0,
            cfg.max_reject_rate,
            f"curation rejected at most {cfg.max_reject_rate:.1%} of its input",
            examples(list(by_reason)),
        )
        self.figure(
            "duplicate_rate",
            dup_rate,
            0.0,
            cfg.max_duplicate_rate,
            f"at most {cfg.max_duplicate_rate:.1%} of the input were duplicates",
            examples(dup_reasons),
        )


def _build(root: Path, cfg: ValidationConfig, uri: str | None = None) -> _Batches:
    """Reads the manifest, card and rejects (and the shards at `uri`, the dataset itself,
    when `cfg.check_shards`); derives the batches and their checks."""
    import pandas as pd

    card = read_card(root)
    table = read_manifest(root)
    n = table.num_rows
    # The list column would only slow GX down; what is checked of it goes into `classes`.
    labels = table.column("classes").to_pylist()
    manifest = table.drop_columns(["classes"]).to_pandas()
    sides = manifest[["width", "height"]].astype("float64")
    long_side = sides.max(axis=1, skipna=False)
    short_side = sides.min(axis=1, skipna=False)
    # long / short: 1 for a square; a zero side gives inf (it fails the bound), a missing
    # side NaN (GX skips it: the not-null check reports that row).
    ratio = long_side / short_side
    ratio[short_side == 0] = math.inf
    manifest["aspect_ratio"] = ratio

    b = _Builder(cfg)
    expected = _expected_splits(card, cfg)
    b.manifest(card, list(expected or card["counts"]))
    frames: dict[str, Any] = {"manifest": manifest}
    classes = b.classes(card, labels)
    if classes is not None:
        frames["classes"] = classes
    if cfg.check_shards:
        from components.shard_check import inspect_shards

        cols = table.select(["key", "shard"]).to_pydict()
        rows = inspect_shards(uri or root, cols, cfg.decode_per_shard)
        frames["shards"] = b.shards(rows)
    b.distinct_captions(manifest, n)
    counts = Counter(s for s in manifest["split"] if isinstance(s, str))
    b.stats.update(num_samples=n, splits=dict(counts), expected_splits=expected)
    if expected:
        b.split_shares(counts, n, expected)
    rejects = _rejects(root, card)
    if rejects is not None:
        b.reject_rates(*rejects, n)
    if b.summary:
        frames["summary"] = pd.DataFrame(b.summary)
    return _Batches(frames, b.checks, b.stats, b.examples)


# ---------------------------------------------------------------------------------------
# Great Expectations


def _run_suites(batches: _Batches, cfg: ValidationConfig) -> dict[str, dict[str, Any]]:
    """Runs each batch's suite in an ephemeral GX context; returns GX's result documents."""
    disable_telemetry()  # before the import: these machines have no way out
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars
    source = context.data_sources.add_pandas("tipsv2")
    results: dict[str, dict[str, Any]] = {}
    for batch in BATCHES:
        checks = [(i, c) for i, c in enumerate(batches.checks) if c.batch == batch]
        if not checks:
            continue
        definition = source.add_dataframe_asset(batch).add_batch_definition_whole_dataframe(batch)
        suite = context.suites.add(gx.ExpectationSuite(name=f"tipsv2_{batch}"))
        for i, c in checks:
            # `check` in meta ties GX's result back to our check (GX may reorder results).
            meta = {"check": i, "description": c.description}
            suite.add_expectation(getattr(gxe, c.expectation)(**c.kwargs, meta=meta))
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"tipsv2_{batch}", data=definition, suite=suite)
        )
        result_format: dict[str, Any] = {
            "result_format": "SUMMARY",  # counts + the first few offending rows, not all
            "partial_unexpected_count": cfg.examples,
        }
        if batch in INDEX_COLUMN:
            result_format["unexpected_index_column_names"] = [INDEX_COLUMN[batch]]
        run = validation.run(
            batch_parameters={"dataframe": batches.frames[batch]}, result_format=result_format
        )
        results[batch] = run.to_json_dict()
    return results


def _exception(info: Mapping[str, Any] | None) -> str | None:
    """The message of an evaluation error (GX nests them per metric when it cannot run)."""
    if not info:
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    for value in info.values():
        if isinstance(value, Mapping) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _check_results(batches: _Batches, suites: Mapping[str, Mapping[str, Any]]) -> list[CheckResult]:
    by_check: dict[int, Mapping[str, Any]] = {}
    for doc in suites.values():
        for r in doc["results"]:
            by_check[int(r["expectation_config"]["meta"]["check"])] = r
    out = []
    for i, c in enumerate(batches.checks):
        r = by_check[i]
        config = r["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        res = r.get("result") or {}
        error = _exception(r.get("exception_info"))
        success = bool(r["success"]) and error is None
        observed = res.get("observed_value")
        unexpected = evaluated = None
        examples: list[dict[str, Any]] = []
        if c.batch == "summary":
            column = c.kwargs["column"]
            observed = batches.frames["summary"][column].iloc[0].item()
            if not success:
                examples = batches.summary_examples.get(column, [])
        elif "unexpected_count" in res:
            unexpected, evaluated = int(res["unexpected_count"]), int(res["element_count"])
            if not success:
                examples = [
                    e if isinstance(e, dict) else {"row": e}
                    for e in res.get("partial_unexpected_index_list") or []
                ]
        out.append(
            CheckResult(
                batch=c.batch,
                expectation=str(config["type"]),
                kwargs=kwargs,
                description=c.description,
                success=success,
                observed=observed,
                unexpected=unexpected,
                evaluated=evaluated,
                examples=tuple(examples),
                error=error,
            )
        )
    return out


def validate(
    data: str | os.PathLike[str],
    config: ValidationConfig | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    write: bool = True,
) -> ValidationResult:
    """Runs the gate on a dataset (a path, file:// or s3:// URI; only its metadata is read).

    Writes validation.json and validation.html into `out` (default `<data>/validation`;
    a path or s3:// URI) unless `write` is False. Returns the result whether or not the
    dataset passed: call `raise_for_failure()` to stop a pipeline. Raises DatasetError for
    a dataset that is incomplete or unreadable, before any expectation runs.
    """
    cfg = config or ValidationConfig()
    uri = os.fspath(data)
    with dataset_metadata(uri) as (root, source):  # source: the version on S3
        batches = _build(root, cfg, source)
    suites = _run_suites(batches, cfg)
    checks = tuple(_check_results(batches, suites))
    target = None
    if write:
        target = os.fspath(out) if out is not None else storage.child(uri, DEFAULT_OUT)
    result = ValidationResult(
        data=uri,
        success=all(c.success for c in checks),
        checks=checks,
        stats=batches.stats,
        suites=suites,
        out=target,
    )
    if target is not None:
        write_report(result, cfg, target)
    return result
