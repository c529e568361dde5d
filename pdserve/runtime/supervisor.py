"""Supervision of one worker slot ("instance"): an explicit state machine, OTP style.

    STARTING --started--> READY --dispatch--> BUSY --finished--> READY
    READY, BUSY --died--> BACKOFF          BUSY --hung--> BACKOFF (the worker is killed)
    BACKOFF --retry--> STARTING --start_failed--> BACKOFF
    STARTING --gave_up--> FAILED           (max_failed_starts failed starts in a row, or the first start)
    any --stop--> STOPPED

A worker that served and then died is replaced at once; each failed start after that waits a
capped exponential backoff with jitter. Any exception in a start counts as a failed start
(OSError from fork limits, shared memory that cannot be created, a model that no longer loads),
so the restart loop cannot die silently. The first start is different: a model that cannot load
once is not retried; its version fails with the reason.

A worker that replaced a hung one is READY but not yet *healthy*: until it finishes a batch (its
warm-up counts, where the model has one) or one compute timeout passes, readiness does not count
it. Without this a model whose every batch hangs looks READY between hangs, since a tensor model's
new worker starts in a second and then takes the next request to hang on.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from pdserve.errors import InferenceFailed, InputRejected, ModelLoadError, WorkerDied, WorkerHung
from pdserve.runtime.process import STOP_TIMEOUT_S, WorkerExited, WorkerHandle, describe_exit

log = logging.getLogger(__name__)
T = TypeVar("T")


class InstanceState(StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"
    BACKOFF = "BACKOFF"  # its worker died or hung; a new one starts after the backoff
    FAILED = "FAILED"  # given up, with the reason in ``error``
    STOPPED = "STOPPED"


S = InstanceState
TRANSITIONS: dict[tuple[InstanceState, str], InstanceState] = {
    (S.STARTING, "started"): S.READY,
    (S.STARTING, "start_failed"): S.BACKOFF,
    (S.STARTING, "gave_up"): S.FAILED,
    (S.READY, "dispatch"): S.BUSY,
    (S.BUSY, "finished"): S.READY,
    (S.READY, "died"): S.BACKOFF,
    (S.BUSY, "died"): S.BACKOFF,
    (S.BUSY, "hung"): S.BACKOFF,
    (S.BACKOFF, "retry"): S.STARTING,
    **{(state, "stop"): S.STOPPED for state in InstanceState},
}
SERVING = frozenset({S.READY, S.BUSY})
PER_BATCH_EVENTS = frozenset({"dispatch", "finished"})  # not logged: one pair per batch


class IllegalTransition(RuntimeError):
    pass


@dataclass(frozen=True)
class RestartPolicy:
    """How hard to try: ``max_failed_starts`` in a row, then FAILED; backoff doubles up to a cap."""

    max_failed_starts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def delay(self, failed_starts: int, rng: random.Random) -> float:
        """No wait to replace a worker that served; then base * 2^(n-1), capped, times U(0.5, 1)."""
        if failed_starts == 0:
            return 0.0
        capped: float = min(self.backoff_max_s, self.backoff_base_s * 2 ** (failed_starts - 1))
        return capped * rng.uniform(0.5, 1.0)


Launcher = Callable[[int], WorkerHandle]
OnChange = Callable[["Instance"], None]


class Instance:
    """One worker slot: starts a worker, runs batches on it, replaces it when it dies or hangs."""

    def __init__(
        self,
        model: str,
        index: int,
        launch: Launcher,
        start_timeout_s: float,
        policy: RestartPolicy,
        on_change: OnChange,
        on_restart: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        self.model = model
        self.index = index
        self.state = S.STARTING
        self.worker: WorkerHandle | None = None
        self.error: str | None = None
        self.restarts = 0
        self.failed_starts = 0
        self.slowest_warmup_s = 0.0
        self.validation: dict[str, Any] | None = None  # an INT8 version's check against FP32 by this worker
        self._launch = launch
        self._start_timeout_s = start_timeout_s
        self._policy = policy
        self._on_change = on_change
        self._on_restart = on_restart
        self._rng = rng or random.Random()
        self._restart_task: asyncio.Task[None] | None = None
        self._suspect_until: float | None = None  # after a hang: monotonic time until which it is not healthy

    @property
    def healthy(self) -> bool:
        """Takes batches now, and has not hung since it last finished one (or not recently)."""
        if self.state not in SERVING:
            return False
        return self._suspect_until is None or time.monotonic() >= self._suspect_until

    @property
    def pid(self) -> int | None:
        return self.worker.pid if self.worker is not None else None

    def _move(self, event: str) -> None:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise IllegalTransition(f"instance {self.index}: no transition from {self.state} on {event!r}")
        old, self.state = self.state, new
        if event not in PER_BATCH_EVENTS:  # lifecycle events, one structured line each
            log.log(
                logging.ERROR if new in (S.BACKOFF, S.FAILED) else logging.INFO,
                "model %s: instance %d: %s (%s -> %s)",
                self.model, self.index, event, old, new,
                extra={"event": f"worker_{event}", "model": self.model, "instance": self.index, "pid": self.pid,
                       "state": str(new), "reason": self.error if new in (S.BACKOFF, S.FAILED) else None},
            )  # fmt: skip
        self._on_change(self)

    # ---- starting ------------------------------------------------------------------------
    async def start(self) -> None:
        """First start; raises if the worker cannot load (the version then fails with the reason)."""
        try:
            await self._start_worker()
        except Exception as exc:
            self.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self._move("gave_up")
            raise
        self._move("started")

    async def _start_worker(self) -> None:
        worker = self.worker = self._launch(self.index)
        try:
            self.slowest_warmup_s = await asyncio.wait_for(worker.ready(), self._start_timeout_s)
        except BaseException as exc:
            worker.kill()
            await worker.stop(STOP_TIMEOUT_S)
            if isinstance(exc, TimeoutError):
                raise ModelLoadError(
                    f"model {self.model!r}: worker did not load within {self._start_timeout_s:.0f}s "
                    "(PDSERVE_WORKER_START_TIMEOUT_S)"
                ) from None
            if isinstance(exc, WorkerExited):
                raise ModelLoadError(f"model {self.model!r}: {exc.message} while loading") from None
            raise
        if self.slowest_warmup_s > 0:  # it ran batches: proof enough that it is not hung
            self._suspect_until = None
        self.validation = worker.validation
        if self.validation is not None:
            v = self.validation
            log.log(
                logging.INFO if v["action"] == "serve" else logging.ERROR,
                "model %s: instance %d: INT8 validation on %s: agreement %.1f%% (allowed disagreement %.1f%%), %s",
                self.model, self.index, v["isa"], 100 * v["agreement"], 100 * v["max_disagreement"], v["action"],
                extra={"event": "quantization_validated", "model": self.model, "instance": self.index, **v},
            )  # fmt: skip
        worker.exited.add_done_callback(lambda _: self._on_worker_exit(worker))

    # ---- running ---------------------------------------------------------------------------
    async def run(self, call: Callable[[WorkerHandle], Awaitable[T]], timeout_s: float) -> T:
        """Run one batch, ``call(worker)``; a worker past ``timeout_s`` is killed and its callers get
        ``WorkerHung``."""
        self._move("dispatch")
        worker = self.worker
        assert worker is not None
        try:
            result = await asyncio.wait_for(call(worker), timeout_s)
        except TimeoutError:
            worker.kill()  # SIGKILL works on a stopped or deadlocked process
            self._suspect_until = time.monotonic() + timeout_s
            self._retire(worker, "hung", f"worker pid {worker.pid} hung: no result within {timeout_s:.1f}s, killed")
            raise WorkerHung(
                f"model {self.model!r}: worker pid {worker.pid} did not finish this batch within {timeout_s:.1f}s "
                "(compute_timeout_ms); it was killed and is being replaced"
            ) from None
        except WorkerExited as exc:
            self._retire(worker, "died", exc.message)
            raise WorkerDied(f"model {self.model!r}: {exc.message} running this batch") from None
        except (InferenceFailed, InputRejected):  # the worker answered: it serves on
            self._finished(worker)
            raise
        self._finished(worker)
        return result

    def _finished(self, worker: WorkerHandle) -> None:
        if worker is self.worker and self.state is S.BUSY:
            self._suspect_until = None
            self._move("finished")

    def _on_worker_exit(self, worker: WorkerHandle) -> None:
        if worker is self.worker and self.state in SERVING:
            code = worker.exited.result()
            self._retire(worker, "died", f"worker pid {worker.pid} {describe_exit(code)}")

    def _retire(self, worker: WorkerHandle, event: str, reason: str) -> None:
        if worker is not self.worker or self.state not in SERVING:
            return  # already retired: the exit callback and the batch both report one death
        self.error = reason
        self._move(event)
        # Not in the context of the request whose batch found the worker hung: the restart is nobody's.
        loop = asyncio.get_running_loop()
        self._restart_task = loop.create_task(self._restart(worker), context=contextvars.Context())

    async def _restart(self, old: WorkerHandle) -> None:
        try:
            await old.stop(STOP_TIMEOUT_S)  # reaps it and frees its shared memory
            while self.state is S.BACKOFF:
                await asyncio.sleep(self._policy.delay(self.failed_starts, self._rng))
                self._move("retry")
                self.restarts += 1
                self._on_restart()
                try:
                    await self._start_worker()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failed_starts += 1
                    self.error = f"start {self.failed_starts} failed: {getattr(exc, 'message', None) or exc!r}"
                    if self.failed_starts >= self._policy.max_failed_starts:
                        self.error = f"gave up after {self.failed_starts} failed starts; last: {self.error}"
                        self._move("gave_up")
                        return
                    self._move("start_failed")
                    continue
                self.failed_starts = 0
                self._move("started")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave the slot in limbo
            log.exception("model %s: instance %d: supervisor failed", self.model, self.index)
            self.error = f"supervisor failed: {exc!r}"
            self.state = S.FAILED
            self._on_change(self)

    # ---- stopping --------------------------------------------------------------------------
    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop supervising and stop the worker (it finishes its running batch first)."""
        if self._restart_task is not None:
            self._restart_task.cancel()
            await asyncio.gather(self._restart_task, return_exceptions=True)
        if self.state is not S.STOPPED:
            self._move("stop")
        if self.worker is not None:
            await self.worker.stop(timeout_s)

    def describe(self) -> dict[str, object]:
        return {
            "index": self.index,
            "pid": self.pid,
            "state": self.state.value,
            "restarts": self.restarts,
            "healthy": self.healthy,
            "validation": self.validation,
            "error": self.error,
        }
