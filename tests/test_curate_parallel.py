"""Ray Data curation runs its workers at the same time.

A plug-in captioner (built once per Ray worker, called per record) waits a fixed time per
record and appends (pid, start, end) to a log. With `workers=2` the two worker processes
must be captioning at the same time for most of the run: 75-81 % of the captioning time
here (75 % with two busy loops competing for the 2 cores), against 34-37 % before the
curation step turned off Ray Data's per-operator budgets (read from its cluster
autoscaler, which reserves nothing at the start of a run, so the workers took turns
after their first blocks). The wait is a sleep, so the share depends little on how
loaded the cores are.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from components.curate import curate
from tests.test_curation import encode, photo

SECONDS_PER_RECORD = 0.02


class SlowCaptioner:
    """Alt-text for every missing field, after a fixed wait; logs when it ran and where."""

    name = "slow"

    def __init__(self, log: str) -> None:
        self.log = log

    def caption(self, image, captions, missing):
        start = time.time()
        time.sleep(SECONDS_PER_RECORD)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {start} {time.time()}\n")
        return {f: captions["alt_text"] for f in missing}


def _together(log: Path) -> tuple[set[str], float]:
    """The processes that captioned, and the share of captioning time during which
    another process was captioning too (0 when they took turns)."""
    rows = [line.split() for line in log.read_text().splitlines()]
    spans = [(pid, float(a), float(b)) for pid, a, b in rows]
    busy = sum(b - a for _, a, b in spans)
    both = 0.0
    for i, (p, a, b) in enumerate(spans):
        for q, c, d in spans[i + 1 :]:
            if p != q:
                both += max(0.0, min(b, d) - max(a, c))
    return {pid for pid, *_ in spans}, 2 * both / busy


@pytest.mark.integration
def test_two_ray_workers_clean_records_at_the_same_time(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(256):
        (src / f"img{i:03d}.jpg").write_bytes(encode(photo(i), quality=90))
        (src / f"img{i:03d}.txt").write_text(f"picture {i}\n")
    log = tmp_path / "captions.log"
    config = {"captioner": {"name": "tests.test_curate_parallel:SlowCaptioner",
                            "options": {"log": str(log)}}}  # fmt: skip

    result = curate([str(src)], str(tmp_path / "out"), config, workers=2, progress=False)

    assert result.num_samples == 256, result.summary
    pids, together = _together(log)
    assert len(pids) == 2, f"expected the records spread over 2 worker processes: {pids}"
    assert together >= 0.55, f"the workers captioned together {together:.0%} of the time"
