"""Training curves as a table DVC plots: `curves.csv` beside a run's `metrics.jsonl`.

`dvc plots show` reads CSV, JSON and YAML but not JSON lines, so `tipsv2 train` and
`tipsv2 distill` also write the training rows (those with a loss; the probe's rows are
left out) as CSV: one column per metric, `step` first, in the order they appear.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

CURVES_FILE = "curves.csv"


def write_curves(run_dir: str | Path) -> Path | None:
    """Writes `<run_dir>/curves.csv` from its metrics.jsonl; None when there is none."""
    run = Path(run_dir)
    source = run / "metrics.jsonl"
    if not source.is_file():
        return None
    rows = []
    for line in source.read_text().splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "train/loss" in row:
            rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    columns = ["step", *(c for c in columns if c != "step")]
    out = run / CURVES_FILE
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    return out
