"""Dynamic batching: concurrent requests joined into one model call, behind a bounded queue.

Each request is an item of `rows` rows (images, texts) with a `key`; only items with the
same key (e.g. the same image size) can share a batch. The worker takes the oldest item,
then keeps adding items of its key until the batch holds `max_batch` rows or `max_wait_s`
has passed since it took the first one, and runs the batch function in an executor
thread (the event loop keeps accepting requests meanwhile).

Back-pressure: the queue holds at most `max_queue` rows. A request that would exceed it
is refused at once with `QueueFull` (the server answers 503 + Retry-After) instead of
waiting on unbounded memory. A request that waits longer than its timeout is dropped
from the queue (it never runs) and raises `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(RuntimeError):
    """The queue has no room for the request; `retry_after` seconds is a fair wait."""

    def __init__(self, name: str, depth: int, retry_after: float) -> None:
        super().__init__(f"model {name!r} is busy: {depth} rows queued; retry later")
        self.retry_after = retry_after


@dataclass
class _Item:
    payload: Any
    rows: int
    key: Hashable
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


# run_batch(payloads) -> one result per payload; it runs in the executor thread.
BatchFn = Callable[[Sequence[Any]], Sequence[Any]]
# on_batch(rows, seconds) is told the size and duration of every batch that ran.
BatchHook = Callable[[int, float], None]


class Batcher:
    """A queue and a worker task for one model; `start()` inside the running event loop."""

    def __init__(
        self,
        name: str,
        run_batch: BatchFn,
        *,
        executor: Executor,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        on_batch: BatchHook | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(
                f"{name}: max_batch and max_queue must be >= 1 and max_wait_s >= 0, "
                f"got {max_batch}, {max_queue}, {max_wait_s}"
            )
        self.name = name
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._queued_rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._batch_s = 0.05  # running mean of a batch's duration, for Retry-After

    @property
    def depth(self) -> int:
        """Rows waiting in the queue (not counting the batch that is running)."""
        return self._queued_rows

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._work(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self._queued_rows = 0

    async def submit(self, payload: Any, rows: int, key: Hashable, timeout_s: float) -> Any:
        """Queues one request and waits for its result (QueueFull, TimeoutError)."""
        assert self._wake is not None, "Batcher.start() was not called"
        # A request larger than the whole queue is still admitted into an empty queue.
        if self._queued_rows and self._queued_rows + rows > self.max_queue:
            batches_ahead = 1 + self._queued_rows // self.max_batch
            raise QueueFull(self.name, self._queued_rows, max(1.0, batches_ahead * self._batch_s))
        item = _Item(payload, rows, key, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._queued_rows += rows
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except TimeoutError:
            # Still queued: take it out so it never runs. Already running: its result is
            # dropped when it arrives.
            if item in self._pending:
                self._pending.remove(item)
                self._queued_rows -= item.rows
            item.future.cancel()
            raise

    def _take(self, key: Hashable, room: int) -> list[_Item]:
        """Queued items of `key` that fit in `room` rows, oldest first, removed from the queue."""
        taken, kept = [], deque()
        for item in self._pending:
            if item.key == key and item.rows <= room:
                taken.append(item)
                room -= item.rows
            else:
                kept.append(item)
        self._pending = kept
        self._queued_rows -= sum(i.rows for i in taken)
        return taken

    async def _next_batch(self) -> list[_Item]:
        assert self._wake is not None
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        first = self._pending.popleft()
        self._queued_rows -= first.rows
        batch, rows = [first], first.rows
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_batch:
            more = self._take(first.key, self.max_batch - rows)
            batch += more
            rows += sum(i.rows for i in more)
            left = deadline - time.monotonic()
            if rows >= self.max_batch or left <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                batch += self._take(first.key, self.max_batch - rows)
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [i for i in await self._next_batch() if not i.future.done()]
            if not batch:
                continue
            t0 = time.monotonic()
            try:
                results = await loop.run_in_executor(
                    self.executor, self.run_batch, [i.payload for i in batch]
                )
            except Exception as e:  # the model failed on this batch: tell every caller
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            dt = time.monotonic() - t0
            self._batch_s = 0.8 * self._batch_s + 0.2 * dt
            if self.on_batch is not None:
                self.on_batch(sum(i.rows for i in batch), dt)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
