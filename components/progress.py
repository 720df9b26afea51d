"""Progress of a long step, for people watching it: one line every few seconds with the
step, the total, the loss, images/s and the time left.

The training loop (tipsv2_core, on Ray workers whose output does not reach the step's
terminal) appends a row to the run's `metrics.jsonl` every `run.log_every` steps; a
`ProgressReporter` tails that file from the step's own process and prints the newest row
at most every `interval_s` seconds, plus one line at the end. On kfp.local the step's
stdout is streamed into `tipsv2 run`'s log and terminal (pipelines/cli/pipeline.py picks
the lines out by their `[progress]` prefix).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PREFIX = "[progress]"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(label: str, row: dict[str, Any], total: int, eta_s: float | None) -> str:
    """`[progress] pretrain nano14: step 120/600 (20%) loss 3.2101 41.2 img/s ETA 2m10s`."""
    step = int(row.get("step", 0))
    parts = [f"{PREFIX} {label}: step {step}/{total}"]
    if total > 0:
        parts[0] += f" ({100 * step // total}%)"
    if isinstance(row.get("train/loss"), int | float):
        parts.append(f"loss {row['train/loss']:.4f}")
    if isinstance(row.get("train/images_per_s"), int | float):
        parts.append(f"{row['train/images_per_s']:.1f} img/s")
    if eta_s is not None and step < total:
        parts.append(f"ETA {_duration(eta_s)}")
    return " ".join(parts)


class ProgressReporter:
    """Tails `metrics_file` in a thread while a step trains (a context manager).

    total: the run's steps; emit: where lines go (print: the step's stdout); interval_s:
    the least time between two lines (rows logged in between are summarised by the newest).
    The ETA is the remaining steps at the rate measured since the first row.
    """

    def __init__(
        self,
        metrics_file: str | Path,
        total: int,
        label: str,
        *,
        interval_s: float = 5.0,
        emit: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        self.path = Path(metrics_file)
        self.total = int(total)
        self.label = label
        self.interval_s = interval_s
        self.emit = emit
        self.lines = 0
        self._offset = 0
        self._partial = ""
        self._latest: dict[str, Any] | None = None
        self._first: tuple[int, float] | None = None
        self._shown_step = -1
        self._last_emit = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tipsv2-progress", daemon=True)

    def __enter__(self) -> ProgressReporter:
        # Rows already there belong to an earlier (resumed) attempt: start after them.
        self._offset = self.path.stat().st_size if self.path.is_file() else 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._read()
        self._show(force=True)

    def _loop(self) -> None:
        while not self._stop.wait(min(1.0, self.interval_s)):
            self._read()
            self._show(force=False)

    def _read(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self._offset:  # rewritten (a resumed run drops rows after its checkpoint)
            self._offset, self._partial = 0, ""
        if size == self._offset:
            return
        with open(self.path) as f:
            f.seek(self._offset)
            text = f.read()
            self._offset = f.tell()
        *lines, self._partial = (self._partial + text).split("\n")
        now = time.monotonic()
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or "train/loss" not in row:
                continue  # probe rows carry no loss: the next training row follows soon
            self._latest = row
            if self._first is None:
                self._first = (int(row.get("step", 0)), now)

    def _show(self, force: bool) -> None:
        row = self._latest
        if row is None or int(row.get("step", 0)) == self._shown_step:
            return
        now = time.monotonic()
        if not force and now - self._last_emit < self.interval_s:
            return
        eta = None
        step = int(row.get("step", 0))
        if self._first is not None and step > self._first[0] and now > self._first[1]:
            rate = (step - self._first[0]) / (now - self._first[1])
            eta = (self.total - step) / rate if rate > 0 else None
        self.emit(progress_line(self.label, row, self.total, eta))
        self.lines += 1
        self._shown_step, self._last_emit = step, now
