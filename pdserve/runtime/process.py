"""One worker process as the event loop sees it: spawn, wait for ready, run batches, stop or kill.

Event-driven: the worker's pipe and process sentinel are registered with the event loop, so no
thread blocks on ``recv`` and nothing polls. What to do when a worker dies or hangs is not decided
here; ``supervisor.py`` decides that. ``WorkerHandle`` is the interface the supervisor needs, so its
tests can drive a fake worker that crashes, hangs or refuses to start on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing as mp
import signal
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

from pdserve.errors import InferenceFailed, InputRejected, ModelLoadError, PdserveError
from pdserve.model_config import ModelConfig
from pdserve.runtime.channel import AsyncChannel
from pdserve.runtime.contract import KindRuntime, Ready, WorkerSpec
from pdserve.runtime.signature import Signature
from pdserve.runtime.worker import worker_main
from pdserve.settings import WORKER_STOP_S

log = logging.getLogger(__name__)
_CTX = mp.get_context("spawn")  # fork after threads (uvicorn, OpenCV) is unsafe; spawn is clean
STOP_TIMEOUT_S = WORKER_STOP_S


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class WorkerOptions:
    """Deployment-wide settings of worker processes (PDSERVE_WORKER_*)."""

    start_timeout_s: float = 300.0
    nice: int = 0
    idle_spin_ms: float = 0.0


class WorkerExited(PdserveError):
    """The worker process is gone; ``exit_code`` says how."""

    def __init__(self, message: str, exit_code: int | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class WorkerHandle(Protocol):
    """What the supervisor needs of one worker; ``ProcessWorker`` is the real one."""

    @property
    def pid(self) -> int | None: ...

    @property
    def exited(self) -> asyncio.Future[int | None]:
        """Resolves with the exit code once the process is gone (and reaped)."""
        ...

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one image's output, known once ready."""
        ...

    async def ready(self) -> float:
        """Wait until loaded and warmed up; return the slowest warm-up batch in seconds.

        Raises ``ModelLoadError`` (the model cannot load) or ``WorkerExited``."""
        ...

    async def run(self, payload: Any) -> tuple[Any, float]:
        """Run one batch as the kind describes it (``Batching``); return its outputs and the compute
        seconds.

        Raises ``InferenceFailed`` (the predictor raised), ``InputRejected`` (it refused this input)
        or ``WorkerExited``."""
        ...

    @property
    def signature(self) -> Signature | None:
        """Kinds that serve tensors: inputs and outputs, known once ready."""
        ...

    @property
    def validation(self) -> dict[str, Any] | None:
        """INT8 versions: the worker's check against FP32 (``validation.py``), known once ready."""
        ...

    def kill(self) -> None: ...

    async def stop(self, timeout_s: float) -> None:
        """Ask the worker to finish and exit; kill it after ``timeout_s``; free its resources."""
        ...


class ProcessWorker:
    """A spawned ``worker_main`` process running a kind's worker, with the kind's transport."""

    def __init__(
        self,
        model: str,
        version_dir: Path,
        config: ModelConfig,
        index: int,
        kind: KindRuntime,
        options: WorkerOptions | None = None,
    ) -> None:
        options = options or WorkerOptions()
        self._model = model
        self._loop = asyncio.get_running_loop()
        self._transport = kind.transport(config)
        try:
            parent_conn, child_conn = _CTX.Pipe()
            spec = WorkerSpec(
                model,
                version_dir,
                config,
                kind.worker,
                self._transport.shared,
                options.nice,
                options.idle_spin_ms / 1000,
            )
            self._process: BaseProcess = _CTX.Process(
                target=worker_main, args=(spec, child_conn), name=f"pdserve-{model}-{index}", daemon=True
            )
            self._process.start()
        except BaseException:
            self._transport.close()
            raise
        child_conn.close()
        self._pid: int | None = self._process.pid
        self._ready: asyncio.Future[float] = self._loop.create_future()
        self._exited: asyncio.Future[int | None] = self._loop.create_future()
        self._pending: tuple[int, asyncio.Future[tuple[Any, ...]]] | None = None
        self._batch_ids = itertools.count()
        self._info = Ready()
        # A worker that can no longer be talked to is killed; the sentinel callback does the accounting.
        self._channel = AsyncChannel(parent_conn, self._loop, self._on_message, self.kill)
        self._loop.add_reader(self._process.sentinel, self._on_exit)

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def exited(self) -> asyncio.Future[int | None]:
        return self._exited

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self._info.output_shape

    @property
    def signature(self) -> Signature | None:
        return self._info.signature

    @property
    def validation(self) -> dict[str, Any] | None:
        return self._info.validation

    async def ready(self) -> float:
        return await asyncio.shield(self._ready)

    async def _call(self, payload: object) -> tuple[Any, ...]:
        if self._exited.done() or self._channel.closed:
            code = self._exited.result() if self._exited.done() else None
            raise WorkerExited(f"worker pid {self._pid} is gone", code)
        assert self._pending is None, "one batch at a time"
        batch_id = next(self._batch_ids)
        future: asyncio.Future[tuple[Any, ...]] = self._loop.create_future()
        self._pending = (batch_id, future)
        try:
            with contextlib.suppress(OSError):  # a dead worker: the sentinel callback fails the future
                self._channel.send(("run", batch_id, payload))
            return await future
        finally:
            self._pending = None

    async def run(self, payload: Any) -> tuple[Any, float]:
        compute, result = await self._call(self._transport.encode(payload))
        return self._transport.decode(result, payload), compute

    def kill(self) -> None:
        if not self._exited.done():
            with contextlib.suppress(OSError):
                self._process.kill()  # SIGKILL also ends a stopped (SIGSTOP) process

    async def stop(self, timeout_s: float) -> None:
        with contextlib.suppress(OSError):
            self._channel.send(("stop",))
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), timeout_s)
        except TimeoutError:
            self.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), STOP_TIMEOUT_S)
        self._transport.close()

    # ---- event-loop callbacks ---------------------------------------------------------------
    def _on_message(self, msg: tuple[Any, ...]) -> None:
        try:
            self._handle(msg)
        except Exception as exc:  # a message we cannot use: treat the worker as broken
            log.exception("model %s: bad message from worker pid %s", self._model, self._pid)
            if not self._ready.done():
                self._ready.set_exception(ModelLoadError(f"model {self._model!r}: {exc}"))
            self.kill()

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready":
            self._info = msg[1]
            message = self._transport.after_ready(self._info)
            if message is not None:
                self._channel.send(("attach", message))
            if not self._ready.done():
                self._ready.set_result(self._info.slowest_warmup_s)
        elif kind == "load_failed":
            if not self._ready.done():
                self._ready.set_exception(ModelLoadError(msg[1]))
        elif kind in ("done", "failed", "rejected") and self._pending is not None and self._pending[0] == msg[1]:
            future = self._pending[1]
            if future.done():
                return
            if kind == "done":
                future.set_result(tuple(msg[2:]))
            elif kind == "rejected":
                future.set_exception(InputRejected(f"model {self._model!r}: {msg[2]}"))
            else:
                future.set_exception(InferenceFailed(f"model {self._model!r}: {msg[2]}"))

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._process.sentinel)
        self._channel.close()
        # The sentinel can close a moment before the kernel lets us reap the child: wait off-loop.
        self._reaper = self._loop.create_task(self._reap())

    async def _reap(self) -> None:
        await asyncio.to_thread(self._process.join, STOP_TIMEOUT_S)
        code = self._process.exitcode
        gone = WorkerExited(f"worker pid {self._pid} {describe_exit(code)}", code)
        if not self._ready.done():
            self._ready.set_exception(gone)
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(gone)
        if not self._exited.done():
            self._exited.set_result(code)
