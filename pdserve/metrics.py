"""Prometheus metrics. Histograms, not summaries, so replicas aggregate; every series labelled by model.

One ``Metrics`` per app, on its own registry, so that tests can build several apps in one process.
The primitives that know a number record it: the batcher its queue wait and batch sizes, the worker
pool the compute time, the HTTP layer the request latency and status.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pdserve.gpu_metrics import GpuCollector, GpuMonitor

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, gpus: GpuMonitor | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if gpus is not None and gpus.available:  # per-GPU series, read at scrape time; absent without a GPU
            r.register(GpuCollector(gpus))
        self.request_latency = Histogram(
            "pdserve_request_duration_seconds",
            "Time from request received to response ready, by model and HTTP status.",
            ["model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "pdserve_queue_wait_seconds",
            "Time an image waited in the batch queue before its batch was dispatched.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "pdserve_inference_compute_seconds",
            "Time of one predictor.run() call on a whole batch, measured in the worker.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pdserve_batch_size",
            "Images in a dispatched batch, before padding.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("pdserve_queue_depth", "Images waiting in the batch queue.", ["model"], registry=r)
        self.inflight = Gauge("pdserve_inflight_requests", "Predict requests being handled.", ["model"], registry=r)
        self.requests = Counter(
            "pdserve_requests", "Predict requests by model and HTTP status.", ["model", "status"], registry=r
        )
        self.errors = Counter(
            "pdserve_request_errors",
            "Failed or abandoned predict requests by model and reason (error code).",
            ["model", "reason"],
            registry=r,
        )
        self.workers_alive = Gauge(
            "pdserve_workers_alive", "Worker processes loaded and serving.", ["model"], registry=r
        )
        self.admission = Counter(
            "pdserve_admission",
            "Decisions at the door by model and decision: admitted, or the reason for a 429 "
            "(queue_full, deadline, requests_in_flight, body_bytes_in_flight).",
            ["model", "decision"],
            registry=r,
        )
        self.expired = Counter(
            "pdserve_deadline_expired",
            "Requests whose deadline passed before they ran, by model and stage (decoding, queued).",
            ["model", "stage"],
            registry=r,
        )
        self.padding = Counter(
            "pdserve_padding_images",
            "Zero images added to batches to reach a warmed-up batch size (compute spent on nothing).",
            ["model"],
            registry=r,
        )
        self.padded_pixels = Counter(
            "pdserve_padded_pixels",
            "Pipeline kinds: pixels of the inputs they batch (kind ocr: recognition lines padded to their width "
            "bucket), by what: padding or all. Waste = padding / all.",
            ["model", "what"],
            registry=r,
        )
        self.int8_agreement = Gauge(
            "pdserve_int8_validation_agreement",
            "INT8 models: top-1 agreement with FP32 on the version's validation set, as run by its workers here.",
            ["model"],
            registry=r,
        )
        self.int8_fallback = Gauge(
            "pdserve_int8_fallback",
            "1 when an INT8 model failed its validation here and its FP32 twin serves in its place.",
            ["model"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "pdserve_worker_restarts", "Worker processes restarted after dying.", ["model"], registry=r
        )
