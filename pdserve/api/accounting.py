"""What every inference request goes through, whatever its protocol: the process-wide limits, the
request metrics, and cancellation when the client leaves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from starlette.requests import Request

from pdserve.api.inputs import wait_for_disconnect
from pdserve.errors import ClientDisconnected, Overloaded, PdserveError
from pdserve.request_log import current as current_request
from pdserve.service import InferenceService, ModelVersion

T = TypeVar("T")
PROCESS_REASONS = ("requests_in_flight", "body_bytes_in_flight")


class Accounted:
    """``with Accounted(service) as req: req.enter(target); ...``: counts the request by model and
    status, keeps it within the process-wide limit while it runs, and records why it failed."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service
        self._started = time.perf_counter()
        self.label = ""
        self._entered = False
        self._target: ModelVersion | None = None

    def __enter__(self) -> Accounted:
        return self

    def enter(self, target: ModelVersion) -> None:
        """The request is for ``target``: count it in flight, or refuse it (429) over the limit."""
        self.label = target.name
        self._service.limits.enter()
        self._entered = True
        self._target = target
        record = current_request()
        if record is not None:
            record.target(target.name, target.version)
        target.hold()  # a reload retires this version only after this request is done
        self._service.metrics.inflight.labels(self.label).inc()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._target is not None:
            self._target.release()
        if self._entered:
            self._service.limits.leave()
            self._service.metrics.inflight.labels(self.label).dec()
        _count(self._service, self.label, exc, time.perf_counter() - self._started)


def _count(service: InferenceService, label: str, exc: BaseException | None, seconds: float) -> None:
    metrics = service.metrics
    status, reason = 200, None
    if isinstance(exc, PdserveError):
        status, reason = exc.status_code, exc.code
        if isinstance(exc, Overloaded) and exc.reason in PROCESS_REASONS:
            metrics.admission.labels(label, exc.reason).inc()
    elif exc is not None:
        status, reason = 500, "internal_error"
    metrics.request_latency.labels(label, str(status)).observe(seconds)
    metrics.requests.labels(label, str(status)).inc()
    if reason is not None:
        metrics.errors.labels(label, reason).inc()


def count_refusal(service: InferenceService, target: ModelVersion, exc: Overloaded) -> None:
    """Count a request the front door refused as the route would have: by model, status and reason."""
    record = current_request()
    if record is not None:
        record.target(target.name, target.version)
        seconds = time.perf_counter() - record.started
    else:
        seconds = 0.0
    _count(service, target.name, exc, seconds)


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` in this task; if the client goes away first, cancel it (its images leave the
    queue) and raise ``ClientDisconnected``. One watcher task a request, not a task for the work too."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await wait_for_disconnect(request)
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:  # our cancellation, not the server's
            raise ClientDisconnected("client disconnected before its result was ready") from None
        raise
    finally:
        watcher.cancel()
