"""Small measurement helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond.

    CPU tensors are invisible to tracemalloc, so this watches the process itself. A spike
    shorter than the sampling period can be missed; the transient attention matrices that
    dominate here live for many milliseconds.
    """

    def __enter__(self) -> PeakRSS:
        # Hand memory freed by earlier runs back to the OS first; otherwise a run that
        # reuses the allocator's cached pages shows no growth at all.
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Runs each function `reps` times in turn (a, b, a, b, …) after one warm-up each.

    Interleaving spreads the machine's noise evenly over the contenders, so their ratio
    is meaningful even when absolute times drift.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def environment() -> dict[str, object]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, rows: list[dict], extra: dict | None = None) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"environment": environment(), "rows": rows, **(extra or {})}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
