"""The model being served, and how it is replaced without failing a request.

Every batch leases the current Servable for its duration. A swap installs the new one
(already loaded and checked beside the old) with one assignment under a lock, so each
batch runs entirely on the old or entirely on the new model; then it waits for the
old one's leases to end (drain) before letting it go.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tipsv2_core.serving.servable import Servable

DRAIN_TIMEOUT_S = 60.0


@dataclass
class SwapRecord:
    """The outcome of the last swap attempt (what `/api/status` shows)."""

    version: str
    ok: bool
    message: str
    at: float


class ModelSlot:
    """Holds the served model; `lease()` in the inference thread, `swap()` from the loader."""

    def __init__(self) -> None:
        self._current: Servable | None = None
        self._leases: dict[int, int] = {}  # id(servable) -> batches running on it
        self._cond = threading.Condition()
        self.last_swap: SwapRecord | None = None

    @property
    def current(self) -> Servable | None:
        return self._current

    @contextlib.contextmanager
    def lease(self) -> Iterator[Servable]:
        """The current model, kept alive until the block ends (a swap drains it)."""
        with self._cond:
            servable = self._current
            if servable is None:
                raise RuntimeError("no model is loaded yet")
            self._leases[id(servable)] = self._leases.get(id(servable), 0) + 1
        try:
            yield servable
        finally:
            with self._cond:
                self._leases[id(servable)] -= 1
                if not self._leases[id(servable)]:
                    del self._leases[id(servable)]
                self._cond.notify_all()

    def swap(self, new: Servable, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> Servable | None:
        """Installs `new` atomically; returns the old model once its batches have finished
        (or the drain timed out: its running batch then still completes on it)."""
        with self._cond:
            old, self._current = self._current, new
            if old is not None:
                deadline = time.monotonic() + drain_timeout_s
                while self._leases.get(id(old)) and time.monotonic() < deadline:
                    self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
        self.last_swap = SwapRecord(new.version, True, f"serving v{new.version}", time.time())
        return old

    def refuse(self, version: str, message: str) -> None:
        """Records a version that failed to load or check; the current one keeps serving."""
        self.last_swap = SwapRecord(version, False, message, time.time())
