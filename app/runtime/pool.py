"""A model version's worker processes, seen from the HTTP process.

Event-driven: each worker's pipe and process sentinel are registered with the event loop, so no
thread blocks on ``recv`` and nothing polls. A worker that dies fails the batch it was running
(its callers get 503 ``worker_died`` at once, never a hang) and is restarted with backoff; the
pool is not ``ready`` until every instance is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing as mp
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import InferenceFailed, ModelLoadError, ShuttingDown, WorkerDied
from app.model_config import ModelConfig
from app.runtime.worker import WorkerSpec, worker_main

log = logging.getLogger(__name__)
_CTX = mp.get_context("spawn")  # fork after threads (uvicorn, OpenCV) is unsafe; spawn is clean
MAX_RESTART_BACKOFF_S = 30.0
STOP_TIMEOUT_S = 10.0


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class InstanceState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    BUSY = "BUSY"
    DEAD = "DEAD"
    STOPPED = "STOPPED"


@dataclass
class _Instance:
    index: int
    in_shm: SharedMemory
    inputs: np.ndarray | None
    out_shm: SharedMemory | None = None
    outputs: np.ndarray | None = None
    process: BaseProcess | None = None
    conn: Connection | None = None
    state: InstanceState = InstanceState.LOADING
    pid: int | None = None
    restarts: int = 0
    error: str | None = None
    ready: asyncio.Future[None] | None = None
    exited: asyncio.Future[int | None] | None = None
    pending: tuple[int, asyncio.Future[float]] | None = None
    restart_task: asyncio.Task[None] | None = field(default=None, repr=False)


class WorkerPool:
    def __init__(
        self,
        model: str,
        version_dir: Path,
        config: ModelConfig,
        start_timeout_s: float,
        on_compute: Any = None,
        on_alive_change: Any = None,
        on_restart: Any = None,
    ) -> None:
        self.model = model
        self._version_dir = version_dir
        self._config = config
        self._start_timeout_s = start_timeout_s
        self._on_compute = on_compute or (lambda seconds: None)
        self._on_alive_change = on_alive_change or (lambda alive: None)
        self._on_restart = on_restart or (lambda: None)
        self._batch_sizes = config.padded_batch_sizes
        self._max_batch = max(self._batch_sizes)
        self._input_shape = tuple(config.input.shape)
        self._out_shape: tuple[int, ...] | None = None
        self._instances: list[_Instance] = []
        self._idle: asyncio.Queue[_Instance] = asyncio.Queue()
        self._batch_ids = itertools.count()
        self._reaping: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ---- state -----------------------------------------------------------------------------
    @property
    def alive(self) -> int:
        return sum(i.state in (InstanceState.READY, InstanceState.BUSY) for i in self._instances)

    @property
    def ready(self) -> bool:
        return bool(self._instances) and self.alive == len(self._instances)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"index": i.index, "pid": i.pid, "state": i.state.value, "restarts": i.restarts, "error": i.error}
            for i in self._instances
        ]

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every instance and wait until each has loaded and warmed up."""
        nbytes = self._max_batch * math.prod(self._input_shape) * 4
        for index in range(self._config.instances):
            shm = SharedMemory(create=True, size=nbytes)
            view: np.ndarray = np.ndarray((self._max_batch, *self._input_shape), np.float32, buffer=shm.buf)
            self._instances.append(_Instance(index, shm, view))
        try:
            await asyncio.gather(*(self._spawn(inst) for inst in self._instances))
        except BaseException:
            await self.stop()
            raise

    async def _spawn(self, inst: _Instance) -> None:
        loop = asyncio.get_running_loop()
        parent_conn, child_conn = _CTX.Pipe()
        spec = WorkerSpec(self.model, self._version_dir, self._config, inst.in_shm.name)
        process = _CTX.Process(target=worker_main, args=(spec, child_conn), name=f"pdserve-{self.model}-{inst.index}")
        process.daemon = True
        inst.state, inst.error, inst.pending = InstanceState.LOADING, None, None
        inst.ready, inst.exited = loop.create_future(), loop.create_future()
        process.start()
        child_conn.close()
        inst.process, inst.conn, inst.pid = process, parent_conn, process.pid
        loop.add_reader(parent_conn.fileno(), self._on_message, inst)
        loop.add_reader(process.sentinel, self._on_exit, inst)
        try:
            await asyncio.wait_for(asyncio.shield(inst.ready), self._start_timeout_s)
        except TimeoutError:
            process.kill()
            raise ModelLoadError(
                f"model {self.model!r}: worker did not load within {self._start_timeout_s:.0f}s"
            ) from None
        inst.state = InstanceState.READY
        self._on_alive_change(self.alive)
        self._idle.put_nowait(inst)

    def _on_message(self, inst: _Instance) -> None:
        conn = inst.conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._handle(inst, conn.recv())
        except (EOFError, OSError):
            # The worker is gone; the sentinel callback does the accounting.
            asyncio.get_running_loop().remove_reader(conn.fileno())

    def _handle(self, inst: _Instance, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready":
            self._attach_output(inst, tuple(msg[1]))
            inst.pid = msg[2]
            if inst.ready is not None and not inst.ready.done():
                inst.ready.set_result(None)
        elif kind == "load_failed":
            inst.error = msg[1]
            if inst.ready is not None and not inst.ready.done():
                inst.ready.set_exception(ModelLoadError(msg[1]))
        elif kind in ("done", "failed") and inst.pending is not None and inst.pending[0] == msg[1]:
            future = inst.pending[1]
            if future.done():  # its caller was cancelled; the worker is free again
                self._release(inst)
                return
            if kind == "done":
                future.set_result(msg[2])
            else:
                future.set_exception(InferenceFailed(f"model {self.model!r}: {msg[2]}"))

    def _attach_output(self, inst: _Instance, out_shape: tuple[int, ...]) -> None:
        if self._out_shape is not None and self._out_shape != out_shape:
            raise ModelLoadError(f"model {self.model!r}: output shape changed {self._out_shape} -> {out_shape}")
        self._out_shape = out_shape
        if inst.out_shm is None:
            inst.out_shm = SharedMemory(create=True, size=max(1, self._max_batch * math.prod(out_shape) * 4))
            inst.outputs = np.ndarray((self._max_batch, *out_shape), np.float32, buffer=inst.out_shm.buf)
        assert inst.conn is not None
        inst.conn.send(("output", inst.out_shm.name))

    def _on_exit(self, inst: _Instance) -> None:
        loop = asyncio.get_running_loop()
        process = inst.process
        assert process is not None
        loop.remove_reader(process.sentinel)
        if inst.conn is not None:
            loop.remove_reader(inst.conn.fileno())
            inst.conn.close()
            inst.conn = None
        was_alive = inst.state in (InstanceState.READY, InstanceState.BUSY)
        inst.state = InstanceState.DEAD  # at once, so no new batch is handed to it
        if was_alive:
            self._on_alive_change(self.alive)
        # The sentinel can close a moment before the kernel lets us reap the child: wait off-loop.
        task = loop.create_task(self._reap(inst, process, was_alive))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _reap(self, inst: _Instance, process: BaseProcess, was_alive: bool) -> None:
        await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
        code = process.exitcode
        if inst.exited is not None and not inst.exited.done():
            inst.exited.set_result(code)
        if inst.ready is not None and not inst.ready.done():
            inst.ready.set_exception(
                ModelLoadError(f"model {self.model!r}: worker {describe_exit(code)} while loading")
            )
        if inst.pending is not None and not inst.pending[1].done():
            inst.pending[1].set_exception(
                WorkerDied(f"model {self.model!r}: worker pid {inst.pid} {describe_exit(code)} running this batch")
            )
        inst.pending = None
        if self._stopping:
            inst.state = InstanceState.STOPPED
            return
        inst.error = inst.error or f"worker pid {inst.pid} {describe_exit(code)}"
        log.error("model %s: worker %d (pid %s) %s", self.model, inst.index, inst.pid, describe_exit(code))
        if was_alive:
            inst.restart_task = asyncio.get_running_loop().create_task(self._restart(inst))

    async def _restart(self, inst: _Instance) -> None:
        attempt = 0
        while not self._stopping:
            inst.restarts += 1
            self._on_restart()
            try:
                await self._spawn(inst)
                log.info("model %s: worker %d restarted as pid %s", self.model, inst.index, inst.pid)
                return
            except ModelLoadError as exc:
                inst.error = str(exc)
                attempt += 1
                await asyncio.sleep(min(MAX_RESTART_BACKOFF_S, 0.5 * 2**attempt))

    async def stop(self) -> None:
        """Stop every worker (after its running batch) and free shared memory."""
        self._stopping = True
        for inst in self._instances:
            if inst.restart_task is not None:
                inst.restart_task.cancel()
            if inst.conn is not None:
                with contextlib.suppress(OSError):
                    inst.conn.send(("stop",))
        waits = [inst.exited for inst in self._instances if inst.exited is not None and not inst.exited.done()]
        if waits:
            _, late = await asyncio.wait(waits, timeout=STOP_TIMEOUT_S)
            if late:
                for inst in self._instances:
                    if inst.process is not None and inst.process.is_alive():
                        inst.process.kill()
                await asyncio.wait(late, timeout=STOP_TIMEOUT_S)
        for inst in self._instances:
            inst.state = InstanceState.STOPPED
            inst.inputs = inst.outputs = None  # drop the views so the segments can close
            for shm in (inst.in_shm, inst.out_shm):
                if shm is not None:
                    shm.close()
                    shm.unlink()
        self._instances = []
        self._on_alive_change(0)

    # ---- inference ---------------------------------------------------------------------------
    async def _acquire(self) -> _Instance:
        while True:
            if self._stopping:
                raise ShuttingDown(f"model {self.model!r} is stopping")
            inst = await self._idle.get()
            # Entries of instances that died while idle, or duplicates after a restart, are stale.
            if inst.state is InstanceState.READY and inst.pending is None:
                return inst

    def _padded(self, n: int) -> int:
        return next(size for size in self._batch_sizes if size >= n)

    async def infer(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one batch (at most max_batch_size CHW float32 images) on an idle worker."""
        n = len(batch)
        inst = await self._acquire()
        size = self._padded(n)
        assert inst.inputs is not None
        for i, image in enumerate(batch):
            inst.inputs[i] = image
        if size > n:  # padding rows keep the shapes oneDNN has seen to the warmed-up set
            inst.inputs[n:size] = 0
        batch_id = next(self._batch_ids)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        inst.pending = (batch_id, future)
        inst.state = InstanceState.BUSY
        assert inst.conn is not None
        with contextlib.suppress(OSError):  # a dead worker: the sentinel callback fails the future
            inst.conn.send(("run", batch_id, size))
        try:
            compute = await future
        except InferenceFailed:
            self._release(inst)
            raise
        assert inst.outputs is not None
        outputs = inst.outputs[:n].copy()
        self._release(inst)
        self._on_compute(compute)
        return list(outputs)

    def _release(self, inst: _Instance) -> None:
        inst.pending = None
        if inst.state is InstanceState.BUSY:
            inst.state = InstanceState.READY
            self._idle.put_nowait(inst)
