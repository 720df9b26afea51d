"""Following a registry alias: when `champion` moves (a promotion or a rollback), the new
version is loaded beside the served one, checked, and swapped in (`ModelSlot.swap`).

A version that fails to download, load or check is refused and recorded with the
reason; the served model stays. It is tried again only after `retry_s` (a download may
have failed for a passing reason) or when the alias moves elsewhere and back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from components.registry import alias_version
from components.serving.slot import ModelSlot
from components.tracking import client_for
from tipsv2_core.serving.servable import Servable

log = logging.getLogger("tipsv2.serve")

# load(version) -> a checked Servable, or raises with the reason.
Loader = Callable[[str], Servable]
# on_swap(version, ok, message) for metrics.
SwapHook = Callable[[str, bool, str], None]


class AliasFollower:
    """Polls `name@alias` every `poll_s` seconds in a daemon thread."""

    def __init__(
        self,
        slot: ModelSlot,
        name: str,
        alias: str,
        load: Loader,
        *,
        tracking_uri: str | None = None,
        poll_s: float = 5.0,
        retry_s: float = 60.0,
        on_swap: SwapHook | None = None,
    ) -> None:
        self.slot = slot
        self.name = name
        self.alias = alias
        self.load = load
        self.tracking_uri = tracking_uri
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.on_swap = on_swap
        self._failed: dict[str, float] = {}  # version -> when it was refused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def target(self) -> str | None:
        """The version the alias points at now (None: no such model or alias)."""
        return alias_version(client_for(self.tracking_uri), self.name, self.alias)

    def check_once(self) -> str | None:
        """Swaps to the alias's version if it moved; returns the version now served."""
        version = self.target()
        current = self.slot.current
        if version is None:
            return current.version if current else None
        if current is not None and current.version == version:
            return version
        refused_at = self._failed.get(version)
        if refused_at is not None and time.monotonic() - refused_at < self.retry_s:
            return current.version if current else None
        before = current.version if current else None
        log.info(
            '{"event": "swap_start", "model": "%s", "from": "%s", "to": "%s"}',
            self.name, before, version,
        )  # fmt: skip
        try:
            new = self.load(version)
        except Exception as e:  # any failure keeps the served model; the reason is kept
            message = f"v{version} of {self.name} was not swapped in: {e}"
            self._failed[version] = time.monotonic()
            self.slot.refuse(version, message)
            log.error('{"event": "swap_refused", "version": "%s", "reason": %r}', version, str(e))
            if self.on_swap:
                self.on_swap(version, False, message)
            return before
        self._failed.pop(version, None)
        self.slot.swap(new)
        log.info('{"event": "swap_done", "from": "%s", "to": "%s"}', before, version)
        if self.on_swap:
            self.on_swap(version, True, f"serving v{version}")
        return version

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_once()
            except Exception as e:  # the registry is unreachable: keep serving, try again
                log.warning('{"event": "registry_unreachable", "reason": %r}', str(e)[:300])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alias-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
