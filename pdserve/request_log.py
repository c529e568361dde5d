"""Request ids, the access log and structured logs.

Every HTTP request gets an id: the client's ``X-Request-ID`` when it is a sane token, a new one
otherwise. The id is echoed in the ``X-Request-ID`` response header and in error bodies, and every
log line written while the request runs carries it. When the response is sent, one access line
(logger ``pdserve.access``) records what an operator needs to follow the request: route, model,
version, status, images, and where the time went (admission, queue, compute, total) with the batch
sizes its images ran in. ``PDSERVE_LOG_FORMAT=json`` writes every line as one JSON object.

Refusals (429) are the one exception: under overload they come by the thousand per second, and on
the cores that also run the model every line written is inference lost. Their access lines are
written at most once a second, each saying how many refusals went unlogged before it
(``refusals_not_logged``); ``pdserve_requests_total`` and ``pdserve_admission_total`` count them all.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")
# Probes and scrapes are logged at DEBUG: at INFO they would drown the requests.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
REFUSAL_LOG_INTERVAL_S = 1.0
access_log = logging.getLogger("pdserve.access")


@dataclass
class RequestRecord:
    """What one request did, filled in by the handlers and the batcher while it runs."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    model: str | None = None
    version: int | None = None
    images: int | None = None
    submitted: float | None = None  # when its first image entered a batch queue
    queue_s: float = 0.0  # the longest any of its images waited for a batch
    compute_s: float = 0.0  # the longest batch any of its images ran in
    batch_sizes: list[int] = field(default_factory=list)

    def target(self, model: str, version: int) -> None:
        self.model, self.version = model, version

    def queued(self) -> None:
        if self.submitted is None:
            self.submitted = time.perf_counter()

    def dispatched(self, waited_s: float) -> None:
        self.queue_s = max(self.queue_s, waited_s)

    def computed(self, seconds: float, batch_size: int) -> None:
        self.compute_s = max(self.compute_s, seconds)
        self.batch_sizes.append(batch_size)

    def fields(self, status: int) -> dict[str, Any]:
        now = time.perf_counter()
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route or self.path,
            "path": self.path,
            "status": status,
            "model": self.model,
            "version": self.version,
            "images": self.images,
            "total_ms": round((now - self.started) * 1000, 2),
        }
        if self.submitted is not None:
            out["admission_ms"] = round((self.submitted - self.started) * 1000, 2)
            out["queue_ms"] = round(self.queue_s * 1000, 2)
            out["compute_ms"] = round(self.compute_s * 1000, 2)
            out["batch_size"] = max(self.batch_sizes) if self.batch_sizes else None
        return out


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("pdserve_request", default=None)


def current() -> RequestRecord | None:
    """The record of the request being handled here, or None outside one."""
    return _current.get()


def current_id() -> str | None:
    record = _current.get()
    return record.request_id if record else None


# New ids: 16 random hex digits drawn once per process, then a counter (32 hex digits in all, like a
# UUID's): unique across replicas and restarts, and without a system call per request.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def request_id_from(value: str | None) -> str:
    """The client's id when it is a sane token (letters, digits, ``._:/+=@-``, at most 128), else a new one."""
    if value and _SANE_ID.fullmatch(value):
        return value
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


class RefusalLines:
    """Whether a refusal's access line is written now: at most one per ``interval_s``."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self.unlogged = 0

    def take(self, now: float) -> int | None:
        """None: skip this line; else how many refusals went unlogged before it."""
        if now < self._next:
            self.unlogged += 1
            return None
        self._next = now + self.interval_s
        skipped, self.unlogged = self.unlogged, 0
        return skipped


class RequestIds:
    """ASGI middleware: the request id, its header on the response, and the access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.refusals = RefusalLines()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), None)
        record = RequestRecord(request_id_from(given), scope.get("method", ""), scope.get("path", ""))
        token = _current.set(record)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()]
                message = {**message, "headers": [*headers, (HEADER.encode(), record.request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            level = logging.DEBUG if record.path in QUIET_PATHS else logging.INFO
            if access_log.isEnabledFor(level):
                self._log(scope, record, status, level)
            _current.reset(token)

    def _log(self, scope: Scope, record: RequestRecord, status: int, level: int) -> None:
        skipped = self.refusals.take(record.started) if status == 429 else 0
        if skipped is None:
            return
        record.route = getattr(scope.get("route"), "path", None)
        fields = record.fields(status)
        if status == 429:
            fields["refusals_not_logged"] = skipped
        access_log.log(level, "access", extra={"access": fields})


# ---- formatting -----------------------------------------------------------------------------------

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class _WithRequestId(logging.Filter):
    """Puts the current request's id on every record written while a request runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_id()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _STANDARD or value is None:
            continue
        if key == "access":
            out.update(value)
        else:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """The usual text line, with the structured fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def configure_logging(level: str, fmt: str) -> None:
    """Root logging for ``pdserve serve``; uvicorn's own access log is replaced by ``pdserve.access``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_WithRequestId())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
