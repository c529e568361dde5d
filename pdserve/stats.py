"""Per-version inference statistics in the shape of Triton's statistics extension.

Prometheus histograms (``metrics.py``) are the aggregate view for dashboards; these are the
cumulative counts and nanoseconds one model version has spent, as ``/v2/models/{m}/stats`` reports
them. The primitives that know a number record it: the service the request's outcome, the
batcher the queue waits and batch sizes, the pool the compute time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VersionStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # images (Triton: inferences, each batch element counted)
    execution_count: int = 0  # batches run
    last_inference_ms: int = 0
    batch_sizes: dict[int, Duration] = field(default_factory=dict)  # padded size -> compute

    def request_done(self, seconds: float, ok: bool) -> None:
        (self.success if ok else self.fail).add(seconds)

    def batch_dispatched(self, size: int, waits: list[float]) -> None:
        for wait in waits:
            self.queue.add(wait)
        self.inference_count += size
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)

    def batch_computed(self, seconds: float, padded: int) -> None:
        self.compute_infer.add(seconds)
        self.batch_sizes.setdefault(padded, Duration()).add(seconds)
