"""What the validation gate found: one `CheckResult` per expectation, the
`ValidationResult` of a dataset, and the report written beside it (`validation.json`,
every check with GX's own result documents; `validation.html`, a summary table)."""

from __future__ import annotations

import dataclasses
import html
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components import storage
from components.validation_config import ValidationConfig

RESULT_FILE = "validation.json"
HTML_FILE = "validation.html"


class ValidationFailed(ValueError):
    """A dataset failed the gate; the message lists the failed checks with examples."""


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
        args = ", ".join(f"{k}={short(v)}" for k, v in self.kwargs.items())
        return f"{self.expectation}({args})"

    def describe(self) -> str:
        """One line: the batch, the expectation with its arguments, what went wrong."""
        text = f"{self.batch}: {self.name} [{self.description}]"
        if self.error:
            return f"{text}: could not be evaluated: {self.error}"
        if self.unexpected is not None:
            text += f": {self.unexpected} of {self.evaluated} rows"
        elif self.observed is not None:
            text += f": observed {short(self.observed)}"
        if self.examples:
            text += "; e.g. " + ", ".join(row(e) for e in self.examples)
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


def short(value: Any, limit: int = 60) -> str:
    """A value for a one-line message: long strings cut, with their length."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit] + "...") + f" ({len(value)} chars)"
    if isinstance(value, list | tuple) and len(value) > 8:
        return "[" + ", ".join(short(v) for v in value[:8]) + f", ... {len(value)} in all]"
    return repr(value)


def row(example: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {short(v)}" for k, v in example.items()) + "}"


def _html(result: ValidationResult) -> str:
    """A self-contained HTML page: the verdict, the figures, and one row per check."""
    esc = html.escape
    status = "PASSED" if result.success else "FAILED"
    colour = "#1a7f37" if result.success else "#cf222e"
    rows = []
    for c in sorted(result.checks, key=lambda c: c.success):  # failures first
        # Our own texts as they are; a value the check observed as a short repr.
        if c.error or c.unexpected is not None:
            seen = c.error or f"{c.unexpected} of {c.evaluated} rows"
        else:
            seen = short(c.observed) if c.observed is not None else ""
        examples = "<br>".join(esc(row(e)) for e in c.examples)
        rows.append(
            f"<tr class={'ok' if c.success else 'bad'}><td>{'ok' if c.success else 'FAILED'}"
            f"</td><td>{esc(c.batch)}</td><td><code>{esc(c.name)}</code><br>"
            f"{esc(c.description)}</td><td>{esc(seen)}</td>"
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


def write_report(result: ValidationResult, config: ValidationConfig, out: str) -> None:
    if storage.parse(out).is_s3:
        from components.settings import configure

        configure()  # the stack's S3 variables, unless the environment names a store
    doc = json.dumps(result.to_json(config), indent=2, default=str) + "\n"
    storage.write_bytes(storage.child(out, RESULT_FILE), doc.encode())
    storage.write_bytes(storage.child(out, HTML_FILE), _html(result).encode())
