"""Scheduling batches onto a model version's instances.

The pool hands each batch to an idle instance (``supervisor.Instance``), bounded by the compute
timeout; how a batch of requests becomes one or more runs is the kind's (``contract.Batching``).
Supervision (restarts, backoff, giving up) lives in ``supervisor.py``; the process in ``process.py``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pdserve.errors import ModelUnavailable, ShuttingDown
from pdserve.model_config import ModelConfig
from pdserve.runtime.contract import KindRuntime
from pdserve.runtime.placement import place
from pdserve.runtime.process import ProcessWorker, WorkerHandle, WorkerOptions
from pdserve.runtime.signature import Signature
from pdserve.runtime.supervisor import SERVING, Instance, InstanceState, Launcher, RestartPolicy

# A batch may take this many times the slowest warm-up batch before its worker counts as hung,
# and never less than the floor: warm-up ran on an idle machine, a loaded one is slower.
COMPUTE_TIMEOUT_FACTOR = 20.0
COMPUTE_TIMEOUT_FLOOR_S = 5.0
UNMEASURED_COMPUTE_TIMEOUT_S = 60.0  # kinds whose shapes only requests know: no warm-up to measure


class PoolObserver:
    """Receives the pool's numbers; the default records nothing."""

    def restarted(self) -> None: ...
    def computed(self, seconds: float, size: int, padded: int) -> None: ...


class WorkerPool:
    def __init__(
        self,
        model: str,
        version_dir: Path,
        config: ModelConfig,
        options: WorkerOptions,
        kind: KindRuntime,
        observer: PoolObserver | None = None,
        launch: Launcher | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.model = model
        self._config = config
        self._observer = observer or PoolObserver()
        self._batch_sizes = config.padded_batch_sizes
        self._batching = kind.batching(config)
        # One config per worker with its own device: instances on each of config.devices (placement.py).
        self._placed = place(config, model)
        self.devices = [c.device for c in self._placed]
        placed = self._placed
        launch = launch or (lambda index: ProcessWorker(model, version_dir, placed[index], index, kind, options))
        self.instances = [
            Instance(
                model,
                index,
                launch,
                options.start_timeout_s,
                policy or RestartPolicy(max_failed_starts=config.max_failed_starts),
                self._changed,
                self._observer.restarted,
            )
            for index in range(len(self._placed))
        ]
        self._idle: deque[Instance] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self.compute_timeout_s = (config.compute_timeout_ms or 0) / 1000 or None
        self.output_shape: tuple[int, ...] = ()  # one item's output (fixed-shape kinds), known once started
        self.signature: Signature | None = None  # named inputs and outputs (tensor kinds), once started

    # ---- state -----------------------------------------------------------------------------
    @property
    def alive(self) -> int:
        """Instances that can take a batch now or when their current one finishes."""
        return sum(i.state in SERVING for i in self.instances)

    @property
    def healthy(self) -> int:
        """Instances that readiness counts: alive and not suspected of hanging (``Instance.healthy``)."""
        return sum(i.healthy for i in self.instances)

    @property
    def failed(self) -> bool:
        """Every instance has been given up on: the version cannot serve again without a reload."""
        return all(i.state is InstanceState.FAILED for i in self.instances)

    def describe(self) -> list[dict[str, object]]:
        return [{**i.describe(), "device": d} for i, d in zip(self.instances, self.devices, strict=True)]

    def _changed(self, inst: Instance) -> None:
        if inst.state is InstanceState.READY:
            self._idle.append(inst)
        self._wake.set()

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every instance and wait until each has loaded and warmed up."""
        try:
            await asyncio.gather(*(inst.start() for inst in self.instances))
        except BaseException:
            await self.stop()
            raise
        first = self.instances[0].worker
        self.output_shape = first.output_shape if first is not None else ()
        self.signature = first.signature if first is not None else None
        if self.compute_timeout_s is None:
            slowest = max(i.slowest_warmup_s for i in self.instances)
            if slowest == 0:  # no warm-up ran: nothing to derive a limit from
                self.compute_timeout_s = UNMEASURED_COMPUTE_TIMEOUT_S
            else:
                self.compute_timeout_s = max(COMPUTE_TIMEOUT_FLOOR_S, COMPUTE_TIMEOUT_FACTOR * slowest)

    async def stop(self) -> None:
        """Stop every worker (after its running batch) and free shared memory."""
        self._stopping = True
        self._wake.set()
        await asyncio.gather(*(inst.stop() for inst in self.instances), return_exceptions=True)

    # ---- inference ---------------------------------------------------------------------------
    async def acquire(self) -> Instance:
        """An idle instance, waiting for one if all are busy or restarting."""
        while True:
            if self._stopping:
                raise ShuttingDown(f"model {self.model!r} is stopping")
            if self.failed:
                errors = "; ".join(sorted({i.error or "" for i in self.instances}))
                raise ModelUnavailable(f"model {self.model!r}: every instance failed: {errors}")
            while self._idle:
                # The instance that finished last: its core is still busy polling for work
                # (``worker.next_message``) and its caches hold the model. Under load every instance
                # is busy and the order does not matter.
                inst = self._idle.pop()
                # Entries of instances that died while idle, or that are already taken, are stale.
                if inst.state is InstanceState.READY:
                    return inst
            self._wake.clear()
            await self._wake.wait()

    def padded(self, n: int) -> int:
        return next(size for size in self._batch_sizes if size >= n)

    async def run_on(self, inst: Instance, payload: Any, size: int, padded: int) -> Any:
        """Run one payload on ``inst`` (from ``acquire``; READY again after), under the compute
        timeout; ``size`` items padded to ``padded`` rows, for the metrics."""
        assert self.compute_timeout_s is not None, "start() first"

        async def call(worker: WorkerHandle) -> tuple[Any, float]:
            return await worker.run(payload)

        outputs, compute = await inst.run(call, self.compute_timeout_s)
        self._observer.computed(compute, size, padded)
        return outputs

    async def infer(self, items: Sequence[Any]) -> list[Any]:
        """Run one batch of items (at most max_batch_size), as the model's kind runs batches."""
        return await self._batching.run(self, items)
