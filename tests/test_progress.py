"""components.progress: a long step's progress lines, tailed from its metrics.jsonl."""

from __future__ import annotations

import json
import re
import time

import pytest

from components.progress import ProgressReporter, progress_line

pytestmark = pytest.mark.unit


def test_progress_line_names_step_total_loss_speed_and_eta():
    row = {"step": 120, "train/loss": 3.21012, "train/images_per_s": 41.25}
    line = progress_line("pretrain nano14", row, 600, 130.0)
    assert line == (
        "[progress] pretrain nano14: step 120/600 (20%) loss 3.2101 41.2 img/s ETA 2m10s"
    )
    assert "ETA" not in progress_line("x", {"step": 600, "train/loss": 1.0}, 600, 0.0)


def test_reporter_tails_rows_at_most_once_per_interval_and_ends_with_the_last(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 99, "train/loss": 9.0}) + "\n")  # an earlier attempt
    lines: list[str] = []
    with ProgressReporter(metrics, 40, "distill nano14", interval_s=0.3, emit=lines.append):
        for step in range(1, 41):
            with metrics.open("a") as f:
                f.write(json.dumps({"step": step, "train/loss": 1.0 / step}) + "\n")
                if step % 10 == 0:  # probe rows carry no loss and are not shown
                    f.write(json.dumps({"step": step, "probe/acc": 0.5}) + "\n")
            time.sleep(0.025)
    steps = [int(re.search(r"step (\d+)/40", line).group(1)) for line in lines]
    assert steps[-1] == 40 and 99 not in steps
    assert 2 <= len(lines) < 10, lines  # a line per interval, not one per row
    assert steps == sorted(set(steps))
    assert any("ETA" in line for line in lines[:-1])
