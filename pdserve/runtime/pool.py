"""Scheduling batches onto a model version's instances.

The pool hands each batch to an idle instance (``supervisor.Instance``), bounded by the compute
timeout. Supervision (restarts, backoff, giving up) lives in ``supervisor.py``; the process and its
shared memory in ``process.py`` and ``transport.py``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from pdserve.errors import InputRejected, ModelUnavailable, ShuttingDown
from pdserve.model_config import ModelConfig
from pdserve.runtime.process import ProcessWorker, WorkerHandle, WorkerOptions
from pdserve.runtime.supervisor import SERVING, Instance, InstanceState, Launcher, RestartPolicy
from pdserve.runtime.tensor_model import Signature

# A batch may take this many times the slowest warm-up batch before its worker counts as hung,
# and never less than the floor: warm-up ran on an idle machine, a loaded one is slower.
COMPUTE_TIMEOUT_FACTOR = 20.0
COMPUTE_TIMEOUT_FLOOR_S = 5.0
TENSOR_COMPUTE_TIMEOUT_S = 60.0  # tensor models have shapes only requests know: no warm-up to measure


async def _run_tensors(worker: WorkerHandle, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    return await worker.run_tensors(feeds)


def _stackable(requests: Sequence[dict[str, np.ndarray]]) -> bool:
    first = requests[0]
    return all(r.keys() == first.keys() and all(r[n].shape[1:] == first[n].shape[1:] for n in first) for r in requests)


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
        observer: PoolObserver | None = None,
        launch: Launcher | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.model = model
        self._config = config
        self._observer = observer or PoolObserver()
        self._batch_sizes = config.padded_batch_sizes
        launch = launch or (lambda index: ProcessWorker(model, version_dir, config, index, options.nice))
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
            for index in range(config.instances)
        ]
        self._idle: deque[Instance] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self.compute_timeout_s = (config.compute_timeout_ms or 0) / 1000 or None
        self.output_shape: tuple[int, ...] = ()  # one image's output, known once started
        self.signature: Signature | None = None  # a tensor model's inputs and outputs, once started
        self._batchable = True

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
        return [i.describe() for i in self.instances]

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
        self._batchable = self.signature.batchable if self.signature is not None else True
        if self.compute_timeout_s is None:
            if self.signature is not None:  # a tensor model is not warmed up: nothing to derive from
                self.compute_timeout_s = TENSOR_COMPUTE_TIMEOUT_S
            else:
                slowest = max(i.slowest_warmup_s for i in self.instances)
                self.compute_timeout_s = max(COMPUTE_TIMEOUT_FLOOR_S, COMPUTE_TIMEOUT_FACTOR * slowest)

    async def stop(self) -> None:
        """Stop every worker (after its running batch) and free shared memory."""
        self._stopping = True
        self._wake.set()
        await asyncio.gather(*(inst.stop() for inst in self.instances), return_exceptions=True)

    # ---- inference ---------------------------------------------------------------------------
    async def _acquire(self) -> Instance:
        while True:
            if self._stopping:
                raise ShuttingDown(f"model {self.model!r} is stopping")
            if self.failed:
                errors = "; ".join(sorted({i.error or "" for i in self.instances}))
                raise ModelUnavailable(f"model {self.model!r}: every instance failed: {errors}")
            while self._idle:
                inst = self._idle.popleft()
                # Entries of instances that died while idle, or that are already taken, are stale.
                if inst.state is InstanceState.READY:
                    return inst
            self._wake.clear()
            await self._wake.wait()

    def padded(self, n: int) -> int:
        return next(size for size in self._batch_sizes if size >= n)

    async def infer(self, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one batch (at most max_batch_size CHW float32 images) on an idle instance."""
        inst = await self._acquire()
        size = self.padded(len(batch))
        assert self.compute_timeout_s is not None, "start() first"
        outputs, compute = await inst.run(lambda worker: worker.run(batch, size), self.compute_timeout_s)
        self._observer.computed(compute, len(batch), size)
        return outputs

    async def infer_tensors(self, requests: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """Run tensor-model requests on one idle instance: stacked along the first dimension when the
        signature and the shapes allow it and the outputs come back one row per input row; else one
        request after the other. A request the model refuses (``InputRejected``) fails alone: a
        refused stack is run again one request at a time to find which."""
        inst = await self._acquire()
        assert self.compute_timeout_s is not None, "start() first"
        timeout = self.compute_timeout_s
        rows = [len(next(iter(r.values()))) for r in requests]
        if len(requests) > 1 and self._batchable and _stackable(requests):
            feeds = {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}
            try:
                outputs, compute = await inst.run(partial(_run_tensors, feeds=feeds), timeout)
            except InputRejected:
                outputs, compute = {}, 0.0
            else:
                self._observer.computed(compute, sum(rows), sum(rows))
            if outputs and all(len(o) == sum(rows) for o in outputs.values()):
                bounds = np.cumsum(rows)[:-1]
                pieces = {name: np.split(o, bounds) for name, o in outputs.items()}
                return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(requests))]
            if outputs:
                self._batchable = False  # e.g. a detector's boxes of all images in one list: never stack again
        # The instance is READY again and nothing else ran meanwhile (no await since): reuse it.
        results: list[dict[str, np.ndarray] | Exception] = []
        for request in requests:
            try:
                outputs, compute = await inst.run(partial(_run_tensors, feeds=request), timeout)
            except InputRejected as exc:
                results.append(exc)
                continue
            self._observer.computed(compute, 1, 1)
            results.append(outputs)
        return results
