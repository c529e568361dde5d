"""The batcher, made deterministic: huge delays so batches close only when full, events to hold a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from pdserve.batching import BatchObserver, BatchPolicy, DynamicBatcher
from pdserve.errors import InferenceFailed, RequestTimeout, ShuttingDown

HUGE = 3600.0
pytestmark = pytest.mark.timeout(10)


class Recorder:
    """A batch function that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, items: list[int]) -> Sequence[int]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [x * 10 for x in items]


async def until(condition: Callable[[], bool]) -> None:
    """Step the event loop (no time passes) until the condition holds; fail if it never does."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def batcher(fn: Recorder, size: int, delay: float = HUGE, concurrency: int = 1) -> DynamicBatcher[int, int]:
    b: DynamicBatcher[int, int] = DynamicBatcher(fn, BatchPolicy(size, delay, concurrency))
    b.start()
    return b


async def test_batch_closes_when_full() -> None:
    fn = Recorder()
    b = batcher(fn, size=3)
    results = await asyncio.gather(*(b.submit(i) for i in range(6)))
    assert results == [0, 10, 20, 30, 40, 50]
    assert fn.batches == [[0, 1, 2], [3, 4, 5]]
    await b.close()


async def test_batch_closes_at_deadline_when_not_full() -> None:
    fn = Recorder()
    b = batcher(fn, size=100, delay=0.05)
    assert await asyncio.gather(b.submit(1), b.submit(2)) == [10, 20]
    assert fn.batches == [[1, 2]]
    await b.close()


async def test_zero_delay_runs_what_is_queued_without_waiting() -> None:
    fn = Recorder()
    b = batcher(fn, size=8, delay=0)
    assert await b.submit(7) == 70
    assert fn.batches == [[7]]
    await b.close()


async def test_cancelled_callers_are_dropped_before_the_batch_runs() -> None:
    fn = Recorder()
    fn.gate.clear()
    b = batcher(fn, size=2)
    first = asyncio.gather(b.submit(0), b.submit(1))  # batch 1 runs and is held open
    await fn.started.wait()
    leaving = asyncio.ensure_future(b.submit(2))
    staying = asyncio.ensure_future(b.submit(3))
    await asyncio.sleep(0)  # let both enqueue
    leaving.cancel()
    staying_too = asyncio.ensure_future(b.submit(4))
    await asyncio.sleep(0)
    fn.gate.set()
    assert await first == [0, 10]
    assert await asyncio.gather(staying, staying_too) == [30, 40]
    # The cancelled input never reached the model, and did not count towards a full batch.
    assert fn.batches == [[0, 1], [3, 4]]
    await b.close()


async def test_a_caller_cancelled_while_its_batch_forms_does_not_fill_it() -> None:
    fn = Recorder()
    b = batcher(fn, size=2)
    leaving = asyncio.ensure_future(b.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the loop has taken it as the first of a batch
    leaving.cancel()
    assert await asyncio.gather(b.submit(2), b.submit(3)) == [20, 30]
    assert fn.batches == [[2, 3]]
    await b.close()


async def test_batch_failure_reaches_every_caller_in_it_and_no_other() -> None:
    fn = Recorder()
    b = batcher(fn, size=2)
    fn.fail = RuntimeError("predictor exploded")
    failed = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
    assert [str(e) for e in failed] == ["predictor exploded", "predictor exploded"]
    fn.fail = None
    assert await asyncio.gather(b.submit(3), b.submit(4)) == [30, 40]
    await b.close()


async def test_wrong_number_of_outputs_fails_every_caller_loudly() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    b: DynamicBatcher[int, int] = DynamicBatcher(short, BatchPolicy(2, HUGE))
    b.start()
    results = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) and "returned 1 outputs" in str(r) for r in results)
    await b.close()


async def test_queue_depth_counts_only_live_undispatched_inputs() -> None:
    fn = Recorder()
    fn.gate.clear()
    b = batcher(fn, size=1)
    running = asyncio.ensure_future(b.submit(0))
    await fn.started.wait()  # batch [0] holds the only slot
    waiting = [asyncio.ensure_future(b.submit(i)) for i in (1, 2, 3)]
    await until(lambda: b.queue_depth == 3)
    waiting[2].cancel()  # a caller that leaves stops counting at once, before the batcher sees it
    await until(lambda: b.queue_depth == 2)
    fn.gate.set()
    assert await asyncio.gather(running, *waiting[:2]) == [0, 10, 20]
    assert b.queue_depth == 0
    await b.close()


async def test_expired_inputs_are_never_run_and_their_batch_mates_are_unaffected() -> None:
    fn = Recorder()
    fn.gate.clear()
    b = batcher(fn, size=2)
    loop = asyncio.get_running_loop()
    running = asyncio.gather(b.submit(0), b.submit(9))
    await fn.started.wait()  # the only slot is busy: what comes next waits in the queue
    expired = asyncio.ensure_future(b.submit(1, deadline=loop.time() - 1))
    alive = [asyncio.ensure_future(b.submit(i, deadline=loop.time() + HUGE)) for i in (2, 3)]
    await asyncio.sleep(0)
    fn.gate.set()
    assert await running == [0, 90]
    assert await asyncio.gather(*alive) == [20, 30]
    with pytest.raises(RequestTimeout):
        await expired
    assert fn.batches == [[0, 9], [2, 3]]
    await b.close()


async def test_the_batching_loop_survives_an_error_of_its_own() -> None:
    fn = Recorder()
    b = batcher(fn, size=1)
    original = b._take_ready
    calls = 0

    def broken_once(batch: list[object]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in batch formation")
        original(batch)  # type: ignore[arg-type]

    b._take_ready = broken_once  # type: ignore[method-assign,assignment]
    with pytest.raises(InferenceFailed, match="bug in batch formation"):
        await b.submit(1)
    assert await b.submit(2) == 20  # the loop is still running
    await b.close()


async def test_waiting_for_an_instance_tops_the_batch_up() -> None:
    fn = Recorder()
    fn.gate.clear()
    b = batcher(fn, size=3, delay=0)
    first = asyncio.ensure_future(b.submit(0))
    await fn.started.wait()
    # With delay 0 the next batch closes at once with [1], then waits for the busy instance;
    # inputs arriving meanwhile join it up to max_batch_size.
    rest = [asyncio.ensure_future(b.submit(i)) for i in (1, 2, 3, 4)]
    await asyncio.sleep(0)
    fn.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 10, 20, 30, 40]
    assert fn.batches == [[0], [1, 2, 3], [4]]
    await b.close()


async def test_concurrency_runs_batches_side_by_side() -> None:
    fn = Recorder()
    fn.gate.clear()
    b = batcher(fn, size=1, concurrency=2)
    tasks = [asyncio.ensure_future(b.submit(i)) for i in range(3)]
    await until(lambda: len(fn.batches) == 2)
    assert fn.batches == [[0], [1]]  # two running at once; the third waits for a slot
    fn.gate.set()
    assert await asyncio.gather(*tasks) == [0, 10, 20]
    await b.close()


async def test_close_drains_queued_inputs_then_refuses_new_ones() -> None:
    fn = Recorder()
    b = batcher(fn, size=10)
    pending = [asyncio.ensure_future(b.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    await b.close()  # does not wait for the huge deadline: closing runs what is queued
    assert [p.result() for p in pending] == [0, 10, 20]
    with pytest.raises(ShuttingDown):
        await b.submit(9)


async def test_observer_sees_sizes_and_waits() -> None:
    seen: list[tuple[int, int]] = []

    class Obs(BatchObserver):
        def dispatched(self, size: int, waits: list[float]) -> None:
            assert all(w >= 0 for w in waits)
            seen.append((size, len(waits)))

    fn = Recorder()
    b: DynamicBatcher[int, int] = DynamicBatcher(fn, BatchPolicy(2, HUGE), Obs())
    b.start()
    await asyncio.gather(*(b.submit(i) for i in range(4)))
    assert seen == [(2, 2), (2, 2)]
    await b.close()


async def test_batch_between_sizes_is_cut_down_and_the_rest_goes_next() -> None:
    # 7 waiting, sizes (1, 2, 4, 8): a batch of 4 (not 7 padded to 8), then 2, then 1; order kept.
    fn = Recorder()
    fn.gate.clear()
    b: DynamicBatcher[int, int] = DynamicBatcher(fn, BatchPolicy(8, 0.0, 1, sizes=(1, 2, 4, 8)))
    b.start()
    first = asyncio.ensure_future(b.submit(0))
    await until(lambda: len(fn.batches) == 1)  # [0] runs and holds the only instance
    rest = [asyncio.ensure_future(b.submit(i)) for i in range(1, 8)]
    await until(lambda: b.queue_depth == 7)
    fn.gate.set()
    assert await asyncio.gather(first, *rest) == [i * 10 for i in range(8)]
    assert fn.batches == [[0], [1, 2, 3, 4], [5, 6], [7]]
    await b.close()


async def test_batch_of_a_size_is_not_cut() -> None:
    fn = Recorder()
    b: DynamicBatcher[int, int] = DynamicBatcher(fn, BatchPolicy(3, HUGE, 1, sizes=(1, 2, 3)))
    b.start()
    await asyncio.gather(*(b.submit(i) for i in range(3)))
    assert fn.batches == [[0, 1, 2]]
    await b.close()


async def test_a_batcher_started_during_a_request_runs_outside_its_context() -> None:
    """Issue 19: a version loaded through the admin API logged that request's id on every batch."""
    from pdserve import request_log

    seen: list[str | None] = []

    async def fn(items: list[int]) -> Sequence[int]:
        seen.append(request_log.current_id())
        return items

    token = request_log._current.set(request_log.RequestRecord("admin-load-1", "POST", "/v2/repository/models/m/load"))
    try:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, BatchPolicy(1, HUGE, 1))
        b.start()  # as a load through the admin API does
    finally:
        request_log._current.reset(token)
    assert await b.submit(1) == 1
    assert seen == [None]
    await b.close()
