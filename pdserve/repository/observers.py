"""A version's numbers: what its batcher and pool report, into Prometheus and Triton-style statistics."""

from __future__ import annotations

from pdserve.admission import ModelAdmission
from pdserve.batching import BatchObserver
from pdserve.metrics import Metrics
from pdserve.runtime.pool import PoolObserver
from pdserve.stats import VersionStats


class BatchMetrics(BatchObserver):
    def __init__(self, metrics: Metrics, model: str, admission: ModelAdmission, stats: VersionStats) -> None:
        self._size = metrics.batch_size.labels(model)
        self._wait = metrics.queue_wait.labels(model)
        self._expired = metrics.expired.labels(model, "queued")
        self._admission = admission
        self._stats = stats

    def dispatched(self, size: int, waits: list[float]) -> None:
        self._size.observe(size)
        for w in waits:
            self._wait.observe(w)
        self._stats.batch_dispatched(size, waits)

    def completed(self, size: int, seconds: float) -> None:
        self._admission.rate.observe(size, seconds)

    def expired(self, count: int) -> None:
        self._expired.inc(count)


class PoolMetrics(PoolObserver):
    def __init__(self, metrics: Metrics, model: str, stats: VersionStats) -> None:
        self._stats = stats
        self._restarts = metrics.worker_restarts.labels(model)  # a zero, not an absent series, until one
        self._compute = metrics.compute.labels(model)
        self._padding = metrics.padding.labels(model)

    def restarted(self) -> None:
        self._restarts.inc()

    def computed(self, seconds: float, size: int, padded: int) -> None:
        self._compute.observe(seconds)
        self._padding.inc(padded - size)
        self._stats.batch_computed(seconds, padded)
