"""The supervisor and the pool against a fake worker that crashes, hangs or refuses to start on cue."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence

import numpy as np
import pytest

from pdserve.errors import ModelLoadError, ModelUnavailable, ShuttingDown, WorkerDied, WorkerHung
from pdserve.kinds import KINDS
from pdserve.model_config import ModelConfig
from pdserve.runtime.pool import WorkerPool
from pdserve.runtime.process import WorkerExited, WorkerOptions
from pdserve.runtime.supervisor import TRANSITIONS, IllegalTransition, Instance, InstanceState, RestartPolicy

pytestmark = pytest.mark.timeout(10)
FAST = RestartPolicy(max_failed_starts=3, backoff_base_s=0.001, backoff_max_s=0.004)
_pids = itertools.count(1000)


class FakeWorker:
    """Loads at once unless told otherwise; runs return the batch doubled, or hang, or crash."""

    def __init__(self, load: str = "ok", warmup_s: float = 0.01) -> None:
        loop = asyncio.get_running_loop()
        self._pid = next(_pids)
        self._exited: asyncio.Future[int | None] = loop.create_future()
        self._ready: asyncio.Future[float] = loop.create_future()
        self._running: asyncio.Future[None] | None = None
        self.behaviour = "ok"  # ok | hang | crash
        self.stopped = False
        if load == "ok":
            self._ready.set_result(warmup_s)
        elif load == "fail":
            self._ready.set_exception(ModelLoadError("model 'm': bad weights"))
        elif load == "crash":
            self.exit(-11)
        # "hang": never ready

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def exited(self) -> asyncio.Future[int | None]:
        return self._exited

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (2,)

    signature = None
    validation = None

    async def ready(self) -> float:
        return await asyncio.shield(self._ready)

    async def run(self, payload: tuple[Sequence[np.ndarray], int]) -> tuple[list[np.ndarray], float]:
        batch, _size = payload  # the image kind's payload: rows and the padded size
        if self._exited.done():
            raise WorkerExited(f"worker pid {self._pid} is gone", self._exited.result())
        self._running = asyncio.get_running_loop().create_future()
        if self.behaviour == "crash":
            self.exit(-11)
        elif self.behaviour == "ok":
            self._running.set_result(None)
        await self._running  # a hung worker never finishes; exit() fails it
        return [x * 2 for x in batch], 0.001

    def exit(self, code: int) -> None:
        if self._exited.done():
            return
        gone = WorkerExited(f"worker pid {self._pid} exited with {code}", code)
        if not self._ready.done():
            self._ready.set_exception(gone)
        if self._running is not None and not self._running.done():
            self._running.set_exception(gone)
        self._exited.set_result(code)

    def kill(self) -> None:
        self.exit(-9)

    async def stop(self, timeout_s: float) -> None:
        self.stopped = True
        self.exit(0)


class Launcher:
    """Hands out fake workers; ``plan`` says how each next start goes (then "ok" for ever)."""

    def __init__(self, *plan: str, warmup_s: float = 0.01) -> None:
        self.plan = list(plan)
        self.warmup_s = warmup_s  # 0: no warm-up, as a tensor model's worker
        self.workers: list[FakeWorker] = []

    def __call__(self, index: int) -> FakeWorker:
        how = self.plan.pop(0) if self.plan else "ok"
        if how == "oserror":
            raise OSError(11, "Resource temporarily unavailable (fork)")
        worker = FakeWorker(how, self.warmup_s)
        self.workers.append(worker)
        return worker


def instance(launch: Launcher, changes: list[InstanceState] | None = None, timeout: float = 5) -> Instance:
    seen = changes if changes is not None else []
    return Instance("m", 0, launch, timeout, FAST, lambda i: seen.append(i.state), rng=random.Random(0))


async def until(condition: object, what: str) -> None:
    for _ in range(2000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


BATCH = [np.ones(2, np.float32)]


async def test_a_worker_that_crashes_while_loading_fails_the_first_start() -> None:
    inst = instance(Launcher("crash"))
    with pytest.raises(ModelLoadError, match="while loading"):
        await inst.start()
    assert inst.state is InstanceState.FAILED
    assert "exited with -11" in (inst.error or "")


async def test_a_worker_that_never_loads_is_killed_at_the_start_timeout() -> None:
    launch = Launcher("hang")
    inst = instance(launch, timeout=0.05)
    with pytest.raises(ModelLoadError, match="did not load within"):
        await inst.start()
    assert launch.workers[0].exited.done()
    assert inst.state is InstanceState.FAILED


async def test_a_hung_batch_is_killed_answered_and_replaced() -> None:
    launch = Launcher()
    states: list[InstanceState] = []
    inst = instance(launch, states)
    await inst.start()
    first = launch.workers[0]
    first.behaviour = "hang"
    with pytest.raises(WorkerHung, match=r"did not finish this batch within 0\.1s"):
        await inst.run(lambda w: w.run((BATCH, 1)), timeout_s=0.05)
    assert first.exited.result() == -9  # killed: SIGKILL also ends a SIGSTOPped process
    await until(lambda: inst.state is InstanceState.READY, "the replacement to be ready")
    assert inst.restarts == 1
    assert inst.pid != first.pid
    outputs, _ = await inst.run(lambda w: w.run((BATCH, 1)), timeout_s=1)
    assert outputs[0].tolist() == [2, 2]
    assert states[:4] == [InstanceState.READY, InstanceState.BUSY, InstanceState.BACKOFF, InstanceState.STARTING]


@pytest.mark.parametrize("warmup_s", [0.0, 0.01])
async def test_a_replacement_for_a_hung_worker_is_healthy_once_it_has_answered(warmup_s: float) -> None:
    """Readiness must not count a worker that may hang like the one it replaced (issue 26)."""
    launch = Launcher(warmup_s=warmup_s)
    inst = instance(launch)
    await inst.start()
    assert inst.healthy
    launch.workers[0].behaviour = "hang"
    with pytest.raises(WorkerHung):
        await inst.run(lambda w: w.run((BATCH, 1)), timeout_s=0.05)
    assert not inst.healthy
    await until(lambda: inst.state is InstanceState.READY, "the replacement to be ready")
    if warmup_s:  # its warm-up ran batches: healthy at once
        assert inst.healthy
        return
    assert not inst.healthy  # READY, but not proven: readiness does not count it
    assert inst.describe()["healthy"] is False
    await inst.run(lambda w: w.run((BATCH, 1)), timeout_s=1)
    assert inst.healthy


async def test_an_unproven_replacement_counts_again_after_one_compute_timeout() -> None:
    launch = Launcher(warmup_s=0.0)
    inst = instance(launch)
    await inst.start()
    launch.workers[0].behaviour = "hang"
    with pytest.raises(WorkerHung):
        await inst.run(lambda w: w.run((BATCH, 1)), timeout_s=0.05)
    await until(lambda: inst.state is InstanceState.READY, "the replacement to be ready")
    await until(lambda: inst.healthy, "the suspicion to lapse")


async def test_a_crash_mid_batch_fails_that_batch_and_restarts() -> None:
    launch = Launcher()
    inst = instance(launch)
    await inst.start()
    launch.workers[0].behaviour = "crash"
    with pytest.raises(WorkerDied, match="exited with -11 running this batch"):
        await inst.run(lambda w: w.run((BATCH, 1)), timeout_s=1)
    await until(lambda: inst.state is InstanceState.READY, "the restart")
    assert inst.restarts == 1
    assert launch.workers[0].stopped  # the dead worker's resources were released


async def test_a_crash_while_idle_restarts_too() -> None:
    launch = Launcher()
    inst = instance(launch)
    await inst.start()
    launch.workers[0].exit(-11)
    await until(lambda: inst.restarts == 1 and inst.state is InstanceState.READY, "the restart")


async def test_failed_restarts_back_off_then_give_up_with_the_reason() -> None:
    launch = Launcher("ok", "oserror", "fail", "crash")  # start, then three failed restarts
    inst = instance(launch)
    await inst.start()
    launch.workers[0].exit(-9)
    await until(lambda: inst.state is InstanceState.FAILED, "the instance to be given up")
    assert inst.failed_starts == 3
    assert "gave up after 3 failed starts" in (inst.error or "")
    assert "exited with -11" in (inst.error or "")  # the last failure is the one named


async def test_a_successful_restart_resets_the_failure_count() -> None:
    launch = Launcher("ok", "oserror", "ok")
    inst = instance(launch)
    await inst.start()
    launch.workers[0].exit(-9)
    await until(lambda: inst.state is InstanceState.READY and inst.restarts == 2, "the second restart")
    assert inst.failed_starts == 0


async def test_stop_while_dead_cancels_the_restart() -> None:
    launch = Launcher("ok", "oserror", "oserror")
    slow = RestartPolicy(max_failed_starts=5, backoff_base_s=60, backoff_max_s=60)
    inst = Instance("m", 0, launch, 5, slow, lambda i: None)
    await inst.start()
    launch.workers[0].exit(-9)
    await until(lambda: inst.failed_starts == 1, "a failed restart, now backing off for a minute")
    await inst.stop()
    assert inst.state is InstanceState.STOPPED
    assert len(launch.workers) == 1  # nothing started after the stop


def test_the_transition_table_refuses_what_it_does_not_list() -> None:
    inst = Instance("m", 0, Launcher(), 5, FAST, lambda i: None)
    inst.state = InstanceState.BACKOFF
    with pytest.raises(IllegalTransition):
        inst._move("dispatch")
    assert (InstanceState.FAILED, "stop") in TRANSITIONS


def test_backoff_is_immediate_first_then_doubles_with_jitter_up_to_the_cap() -> None:
    policy = RestartPolicy(max_failed_starts=10, backoff_base_s=0.5, backoff_max_s=30)
    rng = random.Random(1)
    assert policy.delay(0, rng) == 0
    for n in range(1, 10):
        cap = min(30, 0.5 * 2 ** (n - 1))
        assert cap / 2 <= policy.delay(n, rng) <= cap


# ---- the pool --------------------------------------------------------------------------------


def pool(launch: Launcher, instances: int = 2, compute_timeout_ms: int | None = None) -> WorkerPool:
    config = ModelConfig(instances=instances, compute_timeout_ms=compute_timeout_ms)
    policy = RestartPolicy(max_failed_starts=2, backoff_base_s=0.001, backoff_max_s=0.004)
    return WorkerPool("m", None, config, WorkerOptions(5), KINDS["image"], launch=launch, policy=policy)  # type: ignore[arg-type]


async def test_compute_timeout_defaults_to_a_multiple_of_the_slowest_warmup() -> None:
    p = pool(Launcher())
    await p.start()
    assert p.compute_timeout_s == 5.0  # the floor: 20 x 0.01 s is less
    await p.stop()


async def test_the_pool_keeps_serving_on_the_instances_left() -> None:
    launch = Launcher("ok", "ok", "oserror", "oserror")
    p = pool(launch)
    await p.start()
    launch.workers[0].exit(-9)
    await until(lambda: p.instances[0].state is InstanceState.FAILED, "instance 0 to be given up")
    assert p.alive == 1
    assert not p.failed
    assert [x.tolist() for x in await p.infer(BATCH)] == [[2, 2]]
    await p.stop()


async def test_a_pool_whose_instances_all_failed_answers_model_unavailable() -> None:
    launch = Launcher("ok", "oserror", "oserror")
    p = pool(launch, instances=1)
    await p.start()
    launch.workers[0].exit(-9)
    await until(lambda: p.failed, "every instance to be given up")
    with pytest.raises(ModelUnavailable, match="every instance failed"):
        await p.infer(BATCH)
    await p.stop()


async def test_the_instance_that_finished_last_takes_the_next_batch() -> None:
    """Issue 22: its core is still polling for work and its caches hold the model (LIFO, not round robin)."""
    p = pool(Launcher())
    await p.start()
    first = await p.acquire()
    second = await p.acquire()
    await p.run_on(second, (BATCH, 1), 1, 1)
    await p.run_on(first, (BATCH, 1), 1, 1)  # first is the one freed last
    assert await p.acquire() is first
    await p.stop()


async def test_a_batch_waiting_for_an_instance_learns_of_the_stop() -> None:
    launch = Launcher()
    p = pool(launch, instances=1, compute_timeout_ms=5000)
    await p.start()
    launch.workers[0].behaviour = "hang"
    running = asyncio.ensure_future(p.infer(BATCH))
    await until(lambda: p.instances[0].state is InstanceState.BUSY, "the batch to run")
    waiting = asyncio.ensure_future(p.infer(BATCH))
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(p.stop())
    with pytest.raises(ShuttingDown):
        await waiting
    await stopping
    with pytest.raises(WorkerDied):
        await running


async def test_instances_on_each_of_the_devices_start_interleaved_with_their_own_device() -> None:
    """Issue 25: devices [gpu:0, gpu:1] with 2 instances: 4 workers, each told its GPU."""
    config = ModelConfig(instances=2, devices=["gpu:0", "gpu:1"], device="gpu:0")
    policy = RestartPolicy(max_failed_starts=2, backoff_base_s=0.001, backoff_max_s=0.004)
    launch = Launcher()
    p = WorkerPool("m", None, config, WorkerOptions(5), KINDS["image"], launch=launch, policy=policy)  # type: ignore[arg-type]
    await p.start()
    assert [i["device"] for i in p.describe()] == ["gpu:0", "gpu:1", "gpu:0", "gpu:1"]
    assert len(launch.workers) == 4
    await p.stop()
