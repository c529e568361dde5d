"""Dynamic batching on the event loop.

Each caller awaits its own future. The loop blocks on the first queued item; from that item's
arrival a batch has ``max_delay_s`` to fill up to ``max_batch_size``. It then waits for a free
instance (at most ``concurrency`` batches run at once) and, having one, tops the batch up with
whatever arrived meanwhile. Callers that have gone (cancelled futures) are dropped before the batch
runs. A failure of the batch call fails every caller in it; nothing else does.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.errors import InferenceFailed, QueueFull, ShuttingDown

In = TypeVar("In")
Out = TypeVar("Out")

BatchFn = Callable[[list[In]], Awaitable[Sequence[Out]]]


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_delay_s: float
    max_queue_size: int
    concurrency: int = 1


@dataclass
class _Item(Generic[In, Out]):
    value: In
    future: asyncio.Future[Out]
    enqueued: float = field(default_factory=time.monotonic)


class BatchObserver:
    """Receives the batcher's numbers; the default records nothing."""

    def queued(self, depth: int) -> None: ...
    def dispatched(self, size: int, waits: list[float]) -> None: ...


class DynamicBatcher(Generic[In, Out]):
    def __init__(self, fn: BatchFn[In, Out], policy: BatchPolicy, observer: BatchObserver | None = None) -> None:
        self._fn = fn
        self._policy = policy
        self._observer = observer or BatchObserver()
        self._queue: deque[_Item[In, Out]] = deque()
        self._forming: list[_Item[In, Out]] = []
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Inputs not yet dispatched: queued, or in the batch being formed."""
        return len(self._queue) + len(self._forming)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run_forever())

    async def submit(self, value: In) -> Out:
        """Queue one input and wait for its output. Cancelling the caller drops the input."""
        if self._closed:
            raise ShuttingDown("server is shutting down")
        if self.queue_depth >= self._policy.max_queue_size:
            raise QueueFull(f"queue is full ({self._policy.max_queue_size} waiting); retry later")
        item: _Item[In, Out] = _Item(value, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._observer.queued(self.queue_depth)
        self._arrived.set()
        return await item.future

    async def close(self) -> None:
        """Refuse new inputs, run what is queued, wait for running batches, then stop."""
        self._closed = True
        self._arrived.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _next_item(self, wait_s: float | None) -> _Item[In, Out] | None:
        while not self._queue:
            if self._closed:
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait_s)
            except TimeoutError:
                return None
        return self._queue.popleft()

    def _take_ready(self, batch: list[_Item[In, Out]]) -> None:
        live = sum(not item.future.done() for item in batch)
        while self._queue and live < self._policy.max_batch_size:
            item = self._queue.popleft()
            if not item.future.done():
                batch.append(item)
                live += 1

    async def _collect(self) -> list[_Item[In, Out]] | None:
        """Wait for a first live item, then fill until full or its deadline; None once closed and drained."""
        batch = self._forming = []
        deadline = 0.0
        while True:
            # Callers that left while the batch was forming do not count towards a full batch.
            batch[:] = [item for item in batch if not item.future.done()]
            if len(batch) >= self._policy.max_batch_size:
                return batch
            remaining = deadline - time.monotonic() if batch else None
            if remaining is not None and remaining <= 0:
                return batch
            item = await self._next_item(remaining)
            if item is None:
                if batch:
                    return batch
                if self._closed:
                    return None
                continue
            if not batch:
                deadline = item.enqueued + self._policy.max_delay_s
            batch.append(item)

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while (batch := await self._collect()) is not None:
            await self._slots.acquire()
            self._take_ready(batch)  # a free instance at last: top up with what arrived meanwhile
            live = [item for item in batch if not item.future.done()]
            self._forming = []
            self._observer.queued(self.queue_depth)
            if not live:
                self._slots.release()
                continue
            task = loop.create_task(self._run_batch(live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: list[_Item[In, Out]]) -> None:
        try:
            now = time.monotonic()
            self._observer.dispatched(len(batch), [now - item.enqueued for item in batch])
            try:
                outputs = await self._fn([item.value for item in batch])
                if len(outputs) != len(batch):
                    raise InferenceFailed(f"batch of {len(batch)} inputs returned {len(outputs)} outputs")
            except Exception as exc:  # the batch call failed: every caller in it learns why
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            for item, out in zip(batch, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(out)
        finally:
            self._slots.release()
