"""Dynamic batching on the event loop.

Each caller awaits its own future. The loop blocks on the first queued item; from that item's
arrival a batch has ``max_delay_s`` to fill up to ``max_batch_size``. It then waits for a free
instance (at most ``concurrency`` batches run at once) and, having one, tops the batch up with
whatever arrived meanwhile. With ``sizes`` (the batch sizes the instances are warmed up for), a
batch between two sizes is cut down to the smaller one and the rest stays first in the queue, for
the next free instance: on a CPU a padded row costs as much as a real one. Callers that have
gone (cancelled futures) and items whose deadline has passed are dropped before the batch runs,
so expired work is never executed. A failure of the batch call fails every caller in it; an
exception in the place of one output fails that caller alone. The queue is not bounded here:
admission (``admission.py``) decides at the door.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pdserve.errors import InferenceFailed, RequestTimeout, ShuttingDown
from pdserve.request_log import RequestRecord
from pdserve.request_log import current as current_request

log = logging.getLogger(__name__)
In = TypeVar("In")
Out = TypeVar("Out")

# One output per input, in order; an Exception in an output's place is that input's own failure.
BatchFn = Callable[[list[In]], Awaitable[Sequence[Out | Exception]]]


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_delay_s: float
    concurrency: int = 1
    sizes: tuple[int, ...] = ()  # cut batches down to the largest of these they fill; () = never


@dataclass
class _Item(Generic[In, Out]):
    value: In
    future: asyncio.Future[Out]
    enqueued: float
    deadline: float = math.inf
    dispatched: bool = field(default=False)
    request: RequestRecord | None = None  # the request it belongs to: its access line gets the timings


class BatchObserver:
    """Receives the batcher's numbers; the default records nothing."""

    def dispatched(self, size: int, waits: list[float]) -> None: ...
    def completed(self, size: int, seconds: float) -> None: ...
    def expired(self, count: int) -> None: ...


class DynamicBatcher(Generic[In, Out]):
    def __init__(self, fn: BatchFn[In, Out], policy: BatchPolicy, observer: BatchObserver | None = None) -> None:
        self._fn = fn
        self._policy = policy
        self._observer = observer or BatchObserver()
        self._queue: deque[_Item[In, Out]] = deque()
        self._forming: list[_Item[In, Out]] = []
        self._waiting = 0  # live items not yet dispatched, whether queued or in the forming batch
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._flushing = False
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Live inputs not yet dispatched: queued, or in the batch being formed."""
        return self._waiting

    def start(self) -> None:
        if self._loop_task is None:
            # In a context of its own: started while a request is handled (a load through the admin
            # API), the loop and every batch would otherwise log under that request's id for ever.
            loop = asyncio.get_running_loop()
            self._loop_task = loop.create_task(self._run_forever(), context=contextvars.Context())
            self._loop_task.add_done_callback(self._loop_ended)

    async def submit(self, value: In, deadline: float = math.inf) -> Out:
        """Queue one input and wait for its output; ``deadline`` is in ``loop.time()``.

        Cancelling the caller drops the input; so does its deadline passing before dispatch."""
        if self._closed:
            raise ShuttingDown("server is shutting down")
        loop = asyncio.get_running_loop()
        item: _Item[In, Out] = _Item(value, loop.create_future(), loop.time(), deadline, request=current_request())
        self._waiting += 1
        item.future.add_done_callback(lambda _: self._left(item))
        self._queue.append(item)
        self._arrived.set()
        return await item.future

    def _left(self, item: _Item[In, Out]) -> None:
        """The caller has its answer or has gone; an undispatched item stops counting."""
        if not item.dispatched:
            item.dispatched = True
            self._waiting -= 1

    def flush(self) -> None:
        """From now on batches close as soon as they hold anything: no waiting for company."""
        self._flushing = True
        self._arrived.set()

    async def close(self) -> None:
        """Refuse new inputs, run what is queued, wait for running batches, then stop."""
        self._closed = True
        self._arrived.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _live(self, item: _Item[In, Out], now: float) -> bool:
        if item.future.done():
            return False
        if item.deadline <= now:
            item.future.set_exception(RequestTimeout("the request's deadline passed while it was queued"))
            self._observer.expired(1)
            return False
        return True

    async def _next_item(self, wait_s: float | None) -> _Item[In, Out] | None:
        while not self._queue:
            if self._closed or (self._flushing and wait_s is not None):
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait_s)
            except TimeoutError:
                return None
        return self._queue.popleft()

    def _take_ready(self, batch: list[_Item[In, Out]]) -> None:
        now = asyncio.get_running_loop().time()
        batch[:] = [item for item in batch if self._live(item, now)]
        while self._queue and len(batch) < self._policy.max_batch_size:
            item = self._queue.popleft()
            if self._live(item, now):
                batch.append(item)
        fits = [s for s in self._policy.sizes if s <= len(batch)]
        if fits and max(fits) < len(batch):
            keep = max(fits)
            self._queue.extendleft(reversed(batch[keep:]))
            del batch[keep:]

    async def _collect(self) -> list[_Item[In, Out]] | None:
        """Wait for a first live item, then fill until full or its deadline; None once closed and drained."""
        loop = asyncio.get_running_loop()
        batch = self._forming = []
        close_at = 0.0
        while True:
            # Callers that left while the batch was forming do not count towards a full batch.
            now = loop.time()
            batch[:] = [item for item in batch if self._live(item, now)]
            if len(batch) >= self._policy.max_batch_size:
                return batch
            remaining = close_at - now if batch else None
            if remaining is not None and (remaining <= 0 or self._flushing):
                return batch
            item = await self._next_item(remaining)
            if item is None:
                if batch:
                    return batch
                if self._closed:
                    return None
                continue
            if not self._live(item, loop.time()):
                continue
            if not batch:
                close_at = item.enqueued + self._policy.max_delay_s
            batch.append(item)

    async def _run_forever(self) -> None:
        while True:
            try:
                if not await self._dispatch_one():
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never die silently: fail what was in hand, keep serving
                log.exception("batching loop error; failing the batch being formed")
                for item in self._forming:
                    if not item.future.done():
                        item.future.set_exception(InferenceFailed(f"batching failed: {exc!r}"))
                self._forming = []

    async def _dispatch_one(self) -> bool:
        batch = await self._collect()
        if batch is None:
            return False
        await self._slots.acquire()
        try:
            self._take_ready(batch)  # a free instance at last: top up with what arrived meanwhile
        except BaseException:
            self._slots.release()
            raise
        self._forming = []
        if not batch:
            self._slots.release()
            return True
        for item in batch:
            item.dispatched = True
        self._waiting -= len(batch)
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return True

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("batching loop ended with an error", exc_info=task.exception())

    async def _run_batch(self, batch: list[_Item[In, Out]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            start = loop.time()
            self._observer.dispatched(len(batch), [start - item.enqueued for item in batch])
            for item in batch:
                if item.request is not None:
                    item.request.dispatched(start - item.enqueued)
            clock = time.perf_counter()  # uvloop's loop.time() is cached once an iteration, in whole ms
            try:
                outputs = await self._fn([item.value for item in batch])
                if len(outputs) != len(batch):
                    raise InferenceFailed(f"batch of {len(batch)} inputs returned {len(outputs)} outputs")
            except Exception as exc:  # the batch call failed: every caller in it learns why
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            elapsed = time.perf_counter() - clock
            self._observer.completed(len(batch), elapsed)
            for item in batch:
                if item.request is not None:
                    item.request.computed(elapsed, len(batch))
            for item, out in zip(batch, outputs, strict=True):
                if item.future.done():
                    continue
                if isinstance(out, Exception):
                    item.future.set_exception(out)
                else:
                    item.future.set_result(out)
        finally:
            self._slots.release()
