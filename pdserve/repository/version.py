"""One model version: what it is (``ModelVersion``), what serves it once loaded (``Serving``), the
requests it holds (``Holds``), and its state, derived in one place.

The only stored state is the lifecycle phase, which ``load``, ``retire`` and ``unload`` move; what
clients see (``state``: READY, DEGRADED, RECOVERING, FAILED, ...) is read from the phase and the
workers' health each time it is asked, so there is no second copy to fall out of step.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.admission import ModelAdmission
from pdserve.batching import BatchPolicy, DynamicBatcher
from pdserve.errors import ModelLoadError, ModelNotReady, PdserveError
from pdserve.kinds import kind_of
from pdserve.kinds.base import Feeds, ModelKind, Stage
from pdserve.metrics import Metrics
from pdserve.model_config import ModelConfig
from pdserve.repository.observers import BatchMetrics, PoolMetrics
from pdserve.runtime.pool import WorkerPool
from pdserve.runtime.predictor_config import find_model_files, program_format
from pdserve.runtime.process import WorkerOptions
from pdserve.runtime.signature import Signature
from pdserve.stats import VersionStats

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    PENDING = "PENDING"
    LOADING = "LOADING"
    READY = "READY"
    DEGRADED = "DEGRADED"  # serving, with some instances restarting or given up
    RECOVERING = "RECOVERING"  # loaded, but no instance serves now; they are being restarted
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"  # replaced or unloaded: finishing the requests it holds
    UNLOADED = "UNLOADED"


@dataclass(frozen=True)
class Serving:
    """What a loaded version runs on: its workers (none for a pipeline kind), its batcher and its
    admission, made together."""

    pool: WorkerPool | None
    batcher: DynamicBatcher[Any, Any]
    admission: ModelAdmission


# The servable version of a model of the repository, by name (``ModelRepository.get``).
Resolve = Callable[[str], "ModelVersion"]


def stage_caller(name: str, resolve: Resolve) -> Stage:
    """A pipeline kind's stage: the named model's current version, through its batcher. Resolved on
    every call, so a stage model reloads under a pipeline without it noticing."""

    async def call(array: np.ndarray) -> np.ndarray:
        target = resolve(name)
        signature = target.signature
        if target.batcher is None or signature is None:
            raise ModelNotReady(f"stage model {name!r} is not serving")
        target.hold()
        try:
            outputs: Feeds = await target.batcher.submit({signature.inputs[0].name: array})
        finally:
            target.release()
        if isinstance(outputs, Exception):
            raise outputs
        return outputs[signature.outputs[0].name]

    return call


class Holds:
    """Requests that resolved a version and are not done: a retiring version waits for them."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def hold(self) -> None:
        self.count += 1
        self._idle.clear()

    def release(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path
    config: ModelConfig
    labels: list[str] | None
    fingerprint: tuple[object, ...] = ()  # of its files: a load that finds it unchanged keeps it
    stats: VersionStats = field(default_factory=VersionStats, repr=False)
    serving_on: Serving | None = field(default=None, repr=False)
    holds: Holds = field(default_factory=Holds, repr=False)
    _phase: ModelState = ModelState.PENDING  # PENDING -> LOADING -> READY | FAILED -> UNLOADING -> UNLOADED
    _load_error: str | None = None

    @property
    def program(self) -> tuple[str, str] | None:
        """The program's file name and format (``pdmodel``: Paddle 2 ProgramDesc; ``pir``: Paddle 3 JSON)."""
        found = find_model_files(self.path)
        return (found[0].name, program_format(found[0])) if found else None

    @property
    def kind(self) -> ModelKind:
        return kind_of(self.config.kind)

    # ---- state, derived ----------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        """Load finished and not yet retired (whatever its workers' health)."""
        return self._phase is ModelState.READY and self.serving_on is not None

    @property
    def state(self) -> ModelState:
        if not self.loaded:
            return self._phase
        pool = self.pool
        if pool is None:  # a pipeline kind: serving once loaded; its stages answer for themselves
            return ModelState.READY
        if pool.failed:
            return ModelState.FAILED
        healthy = pool.healthy  # a worker that replaced a hung one counts once it has answered
        if healthy == 0:
            return ModelState.RECOVERING
        if healthy < len(pool.instances) or self.fallback is not None:
            return ModelState.DEGRADED
        return ModelState.READY

    @property
    def serving(self) -> bool:
        """At least one instance takes batches."""
        return self.state in (ModelState.READY, ModelState.DEGRADED)

    @property
    def error(self) -> str | None:
        """Why the version is not fully serving, if it is not."""
        pool = self.pool
        if self._load_error is not None or pool is None:
            return self._load_error
        errors = [f"instance {i.index}: {i.error}" for i in pool.instances if i.error]
        if self.fallback is not None:
            errors.append(self.fallback)
        return "; ".join(errors) or None

    # ---- what serves it ------------------------------------------------------------------------
    @property
    def pool(self) -> WorkerPool | None:
        return self.serving_on.pool if self.serving_on is not None else None

    @property
    def stages(self) -> dict[str, str]:
        """Role -> model, for a pipeline kind (``ModelKind.stages``)."""
        return self.kind.stages(self.config)

    @property
    def batcher(self) -> DynamicBatcher[Any, Any] | None:
        return self.serving_on.batcher if self.serving_on is not None else None

    @property
    def admission(self) -> ModelAdmission | None:
        return self.serving_on.admission if self.serving_on is not None else None

    @property
    def alive(self) -> int:
        return self.pool.alive if self.pool is not None and self.loaded else 0

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth if self.batcher is not None else 0

    @property
    def signature(self) -> Signature | None:
        """Named inputs and outputs (tensor kinds), once its workers have started."""
        return self.pool.signature if self.pool is not None else None

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        """One item's output shape (fixed-shape kinds), once its workers have started."""
        return self.pool.output_shape if self.pool is not None else None

    @property
    def compute_timeout_s(self) -> float | None:
        return self.pool.compute_timeout_s if self.pool is not None else None

    def instances(self) -> list[dict[str, Any]]:
        """Each worker instance: index, pid, state, restarts, health, error, validation."""
        return self.pool.describe() if self.pool is not None else []

    @property
    def validation(self) -> list[dict[str, Any]]:
        """An INT8 version's checks against FP32, one per worker that ran one."""
        if self.pool is None:
            return []
        return [i.validation for i in self.pool.instances if i.validation is not None]

    @property
    def fallback(self) -> str | None:
        """Why FP32 serves in this INT8 version's place, if it does (quantization.on_failure: fallback)."""
        failed = next((v for v in self.validation if v["action"] == "fallback"), None)
        if failed is None:
            return None
        return (
            f"INT8 validation on {failed['isa']}: top-1 agreement with FP32 {failed['agreement']:.1%} "
            f"(allowed disagreement {failed['max_disagreement']:.1%}); serving the FP32 fallback"
        )

    # ---- lifecycle -----------------------------------------------------------------------------
    def hold(self) -> None:
        self.holds.hold()

    def release(self) -> None:
        self.holds.release()

    async def load(self, metrics: Metrics, workers: WorkerOptions, resolve: Resolve | None = None) -> None:
        """Start the workers and the batcher, in a context of their own: a load through the admin API
        must not leave that request's id on every later line its workers, supervisor and batcher log.
        ``resolve`` finds a pipeline kind's stage models."""
        loop = asyncio.get_running_loop()
        await loop.create_task(self._load(metrics, workers, resolve), context=contextvars.Context())

    async def _load(self, metrics: Metrics, workers: WorkerOptions, resolve: Resolve | None) -> None:
        self._phase = ModelState.LOADING
        if self.stages:
            self._load_pipeline(metrics, resolve)
            return
        pool = WorkerPool(
            self.name, self.path, self.config, workers, self.kind, PoolMetrics(metrics, self.name, self.stats)
        )
        try:
            await pool.start()
        except PdserveError as exc:
            self._phase, self._load_error = ModelState.FAILED, exc.message
            log.error(
                "model %s version %d failed to load: %s", self.name, self.version, exc.message,
                extra={"event": "version_failed", "model": self.name, "version": self.version, "reason": exc.message},
            )  # fmt: skip
            return
        for check in [i.validation for i in pool.instances if i.validation is not None]:
            metrics.int8_agreement.labels(self.name).set(check["agreement"])
            metrics.int8_fallback.labels(self.name).set(check["action"] == "fallback")
        policy = BatchPolicy(
            max_batch_size=self.config.max_batch_size,
            max_delay_s=self.config.max_queue_delay_ms / 1000,
            concurrency=len(pool.instances),  # instances on each of config.devices
            sizes=self.config.padded_batch_sizes if self.config.trims_batches else (),
        )
        admission_total = metrics.admission
        admission = ModelAdmission(
            self.name,
            self.config.max_queue_size,
            queued=lambda: self.queue_depth,
            serving_instances=lambda: pool.alive,
            count=lambda reason: admission_total.labels(self.name, reason).inc(),
        )
        batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
            pool.infer, policy, BatchMetrics(metrics, self.name, admission, self.stats)
        )
        self._serve(Serving(pool, batcher, admission))

    def _load_pipeline(self, metrics: Metrics, resolve: Resolve | None) -> None:
        """A pipeline kind: no workers; its batches run over its stage models' batchers."""
        if resolve is None:
            raise ModelLoadError(f"model {self.name!r}: a pipeline kind needs the repository to find its stages")
        try:
            pipeline = self.kind.pipeline(self, metrics)
        except PdserveError as exc:
            self._phase, self._load_error = ModelState.FAILED, exc.message
            log.error("model %s version %d failed to load: %s", self.name, self.version, exc.message)
            return
        stages = {role: stage_caller(model, resolve) for role, model in self.stages.items()}

        async def run(items: list[Any]) -> list[Any]:
            return await pipeline.run(items, stages)

        admission_total = metrics.admission
        admission = ModelAdmission(
            self.name,
            self.config.max_queue_size,
            queued=lambda: self.queue_depth,
            serving_instances=lambda: self.config.instances,
            count=lambda reason: admission_total.labels(self.name, reason).inc(),
        )
        policy = BatchPolicy(
            max_batch_size=self.config.max_batch_size,
            max_delay_s=self.config.max_queue_delay_ms / 1000,
            concurrency=self.config.instances,  # pipeline batches in flight at once
        )
        batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
            run, policy, BatchMetrics(metrics, self.name, admission, self.stats)
        )
        self._serve(Serving(None, batcher, admission))

    def _serve(self, serving: Serving) -> None:
        self.serving_on = serving
        serving.batcher.start()
        self._phase = ModelState.READY
        log.info(
            "model %s version %d ready (%d instances)", self.name, self.version, self.config.instances,
            extra={"event": "version_ready", "model": self.name, "version": self.version,
                   "instances": self.config.instances},
        )  # fmt: skip

    async def retire(self, timeout_s: float) -> None:
        """Take no new requests; let those that resolved this version finish; then stop it."""
        if self._phase is not ModelState.FAILED:
            self._phase = ModelState.UNLOADING
        if self.batcher is not None:
            self.batcher.flush()  # nothing new will join: run what waits for company now
        if self.holds.count and not await self.holds.wait_idle(timeout_s):
            log.warning(
                "model %s version %d: %d requests still held after %.0fs",
                self.name,
                self.version,
                self.holds.count,
                timeout_s,
            )
        await self.unload()

    async def unload(self) -> None:
        if self.serving_on is not None:
            await self.serving_on.batcher.close()
            if self.serving_on.pool is not None:
                await self.serving_on.pool.stop()
        if self._phase is not ModelState.FAILED:
            self._phase = ModelState.UNLOADED
