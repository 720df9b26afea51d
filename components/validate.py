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
`<dataset>/validation` unless told otherwise. The CLI (`tipsv2 data validate`) exits
non-zero on failure so a pipeline stops before training.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from components import storage
from components.datasets import dataset_metadata
from components.settings import disable_telemetry
from tipsv2_core.data.card import CAPTION_FIELDS
from tipsv2_core.data.layout import REJECTED_FILE, read_card, read_manifest
from tipsv2_core.schema import build, parse_mapping

__all__ = [
    "CheckResult",
    "ValidationConfig",
    "ValidationFailed",
    "ValidationResult",
    "load_config",
    "validate",
]

RESULT_FILE = "validation.json"
HTML_FILE = "validation.html"
DEFAULT_OUT = "validation"  # below the dataset, unless `out` says otherwise
BATCHES = ("manifest", "classes", "shards", "summary")
# The column that names an offending row in each batch's failure examples.
INDEX_COLUMN = {"manifest": "key", "classes": "class", "shards": "shard"}
# Characters, not words: a caption is stored and tokenised as text; these bounds catch
# empty strings and runaway generations (the text encoder reads 64 tokens of it anyway).
DEFAULT_CAPTION_MAX_CHARS = {"alt_text": 1000, "caption_medium": 2000, "caption_long": 8000}
NO_CLASS = "background"  # the label-map background is never a caption class


class ValidationFailed(ValueError):
    """A dataset failed the gate; the message lists the failed checks with examples."""


# ---------------------------------------------------------------------------------------
# configuration


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


# ---------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class CheckResult:
    """One expectation as evaluated: what it asked, whether it held, and offending rows.

    `observed` is the value a table-level check saw (row count, a rate); for row-level
    checks `unexpected` of `evaluated` rows failed and `examples` holds the first few of
    them (with the sample key). `error` is set when GX could not evaluate the check.
    """

    batch: str
    expectation: str
    kwargs: dict[str, Any]
    description: str
    success: bool
    observed: Any = None
    unexpected: int | None = None
    evaluated: int | None = None
    examples: tuple[dict[str, Any], ...] = ()
    error: str | None = None

    @property
    def name(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.kwargs.items())
        return f"{self.expectation}({args})"

    def describe(self) -> str:
        """One line: the batch, the expectation with its arguments, what went wrong."""
        text = f"{self.batch}: {self.name} [{self.description}]"
        if self.error:
            return f"{text}: could not be evaluated: {self.error}"
        if self.unexpected is not None:
            text += f": {self.unexpected} of {self.evaluated} rows"
        elif self.observed is not None:
            text += f": observed {_short(self.observed)}"
        if self.examples:
            text += "; e.g. " + ", ".join(_row(e) for e in self.examples)
        return text

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "examples": list(self.examples), "name": self.name}


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of the gate on one dataset; `failures` are the checks that did not hold."""

    data: str
    success: bool
    checks: tuple[CheckResult, ...]
    stats: dict[str, Any]
    suites: dict[str, dict[str, Any]]
    out: str | None = None

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.success)

    def message(self) -> str:
        """A human summary: a one-liner on success, every failed check with examples else."""
        where = f"; report: {storage.child(self.out, HTML_FILE)}" if self.out else ""
        if self.success:
            return (
                f"validation passed: {len(self.checks)} checks on {self.data} "
                f"({self.stats['num_samples']} samples){where}"
            )
        lines = [
            f"validation FAILED: {len(self.failures)} of {len(self.checks)} checks on "
            f"{self.data}{where}"
        ]
        lines += [f"  - {c.describe()}" for c in self.failures]
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raises ValidationFailed (with `message()`) unless the dataset passed."""
        if not self.success:
            raise ValidationFailed(self.message())

    def to_json(self, config: ValidationConfig) -> dict[str, Any]:
        return {
            "dataset": self.data,
            "success": self.success,
            "validated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "statistics": {
                "evaluated": len(self.checks),
                "successful": len(self.checks) - len(self.failures),
                "failed": len(self.failures),
            },
            "failures": [c.describe() for c in self.failures],
            "config": config.to_dict(),
            "dataset_stats": self.stats,
            "checks": [c.to_json() for c in self.checks],
            "great_expectations": self.suites,
        }


def _short(value: Any, limit: int = 60) -> str:
    """A value for a one-line message: long strings cut, with their length."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit] + "...") + f" ({len(value)} chars)"
    if isinstance(value, list | tuple) and len(value) > 8:
        return "[" + ", ".join(_short(v) for v in value[:8]) + f", ... {len(value)} in all]"
    return repr(value)


def _row(example: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in example.items()) + "}"


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


# ---------------------------------------------------------------------------------------
# the report


def _html(result: ValidationResult) -> str:
    """A self-contained HTML page: the verdict, the figures, and one row per check."""
    esc = html.escape
    status = "PASSED" if result.success else "FAILED"
    colour = "#1a7f37" if result.success else "#cf222e"
    rows = []
    for c in sorted(result.checks, key=lambda c: c.success):  # failures first
        seen = c.error or (
            f"{c.unexpected} of {c.evaluated} rows" if c.unexpected is not None else c.observed
        )
        examples = "<br>".join(esc(_row(e)) for e in c.examples)
        rows.append(
            f"<tr class={'ok' if c.success else 'bad'}><td>{'ok' if c.success else 'FAILED'}"
            f"</td><td>{esc(c.batch)}</td><td><code>{esc(c.name)}</code><br>"
            f"{esc(c.description)}</td><td>{esc(_short(seen) if seen is not None else '')}</td>"
            f"<td>{examples}</td></tr>"
        )
    stats = _figures_html(result.stats)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Validation: {esc(result.data)}</title>
<style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}
tr.bad td{{background:#ffebe9}} .verdict{{color:{colour};font-weight:bold}}
</style></head><body>
<h1>Dataset validation: <span class="verdict">{status}</span></h1>
<p>Dataset <code>{esc(result.data)}</code>: {len(result.checks) - len(result.failures)} of
{len(result.checks)} checks passed.</p>
<table><tr><th>status</th><th>batch</th><th>expectation</th><th>observed</th>
<th>examples</th></tr>
{"".join(rows)}
</table>
<h2>Figures</h2>{stats}
</body></html>
"""


def _figures_html(stats: Mapping[str, Any]) -> str:
    """The dataset-level figures as tables: one row per figure; a mapping of plain values
    (counts per split, per class) as a nested two-column table, anything deeper as JSON."""
    esc = html.escape

    def cell(value: Any) -> str:
        if isinstance(value, Mapping) and all(
            not isinstance(v, Mapping | list) for v in value.values()
        ):
            rows = "".join(
                f"<tr><td>{esc(str(k))}</td><td>{esc(_fmt_value(v))}</td></tr>"
                for k, v in value.items()
            )
            return f"<table>{rows}</table>"
        if isinstance(value, Mapping | list):
            return f"<code>{esc(json.dumps(value, default=str))}</code>"
        return esc(_fmt_value(value))

    rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in stats.items())
    return f"<table>{rows}</table>"


def _fmt_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_report(result: ValidationResult, config: ValidationConfig, out: str) -> None:
    if storage.parse(out).is_s3:
        from components.settings import configure

        configure()  # the stack's S3 variables, unless the environment names a store
    doc = json.dumps(result.to_json(config), indent=2, default=str) + "\n"
    storage.write_bytes(storage.child(out, RESULT_FILE), doc.encode())
    storage.write_bytes(storage.child(out, HTML_FILE), _html(result).encode())


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
        _write_report(result, cfg, target)
    return result
