"""Admission: decide at the door, before any work, whether a request can be served in time.

Two levels, both answering 429 ``overloaded`` with a ``Retry-After``:

* per model version, a bound on images admitted but not yet dispatched (decoding + queued), and
  a refusal of requests whose estimated wait (images ahead / drain rate) exceeds their deadline;
* per process, a bound on requests in flight and on bytes of request bodies being read.

Every decision is counted by reason (``pdserve_admission_total``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pdserve.errors import Overloaded

# Weight of the newest batch in the moving average of per-instance throughput.
RATE_SMOOTHING = 0.2


class DrainRate:
    """Images per second one instance completes, as a moving average over recent batches.

    Measured per batch (size / wall time from dispatch to result), so an idle spell does not make
    the estimate look slow; multiplied by the instances serving, it is how fast the queue drains.
    """

    def __init__(self) -> None:
        self.per_instance: float | None = None

    def observe(self, size: int, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = size / seconds
        prev = self.per_instance
        self.per_instance = rate if prev is None else prev + RATE_SMOOTHING * (rate - prev)


@dataclass
class Decision:
    admitted: bool
    reason: str  # "admitted", or why not


class ModelAdmission:
    """The door of one model version."""

    def __init__(
        self,
        model: str,
        max_pending: int,
        queued: Callable[[], int],
        serving_instances: Callable[[], int],
        count: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.model = model
        self.max_pending = max_pending
        self.rate = DrainRate()
        self.decoding = 0
        self._queued = queued
        self._serving = serving_instances
        self._count = count

    @property
    def pending(self) -> int:
        """Images admitted and not yet dispatched: being decoded, or queued."""
        return self.decoding + self._queued()

    def drain_rate(self) -> float | None:
        """Images per second the queue drains at, or None before the first batch."""
        if self.rate.per_instance is None:
            return None
        return self.rate.per_instance * max(1, self._serving())

    def estimated_wait_s(self, ahead: int) -> float:
        rate = self.drain_rate()
        return 0.0 if rate is None or ahead == 0 else ahead / rate

    def _retry_after(self, ahead: int) -> float:
        return max(1.0, self.estimated_wait_s(ahead))

    def check_room(self, images: int = 1) -> None:
        """Refuse at once when ``images`` more would exceed the bound; counts only refusals."""
        pending = self.pending
        if pending + images > self.max_pending:
            self._count("queue_full")
            raise Overloaded(
                f"model {self.model!r} is overloaded: {pending} images waiting, bound {self.max_pending} "
                "(max_queue_size); retry later",
                self._retry_after(pending),
                reason="queue_full",
            )

    def admit(self, images: int, time_left_s: float) -> None:
        """Admit ``images`` (now counted as decoding) or raise ``Overloaded``."""
        self.check_room(images)
        pending = self.pending
        wait = self.estimated_wait_s(pending)
        if wait > time_left_s:
            self._count("deadline")
            raise Overloaded(
                f"model {self.model!r}: estimated wait {wait * 1000:.0f} ms for the {pending} images ahead "
                f"exceeds this request's deadline ({time_left_s * 1000:.0f} ms left)",
                self._retry_after(pending),
                reason="deadline",
            )
        self._count("admitted")
        self.decoding += images

    def decoded(self, images: int) -> None:
        """``images`` left decoding (into the queue, or out with an error)."""
        self.decoding -= images


class ProcessLimits:
    """Process-wide bounds on requests in flight and on request-body bytes being read.

    Its refusals name their reason (``Overloaded.reason``); the caller, which knows the model, counts them."""

    def __init__(self, max_requests: int, max_body_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_body_bytes = max_body_bytes
        self.requests = 0
        self.body_bytes = 0

    def check(self) -> None:
        """Refuse when one more request would exceed the bound, without counting it."""
        if self.requests >= self.max_requests:
            raise Overloaded(
                f"server is overloaded: {self.requests} requests in flight (PDSERVE_MAX_INFLIGHT_REQUESTS)",
                reason="requests_in_flight",
            )

    def enter(self) -> None:
        self.check()
        self.requests += 1

    def leave(self) -> None:
        self.requests -= 1

    def reserve_body(self, nbytes: int) -> None:
        """Count ``nbytes`` of body being read, or refuse; ``release_body`` gives them back."""
        if self.body_bytes + nbytes > self.max_body_bytes and self.body_bytes > 0:
            raise Overloaded(
                f"server is overloaded: {self.body_bytes} bytes of request bodies being read "
                "(PDSERVE_MAX_INFLIGHT_BODY_BYTES)",
                reason="body_bytes_in_flight",
            )
        self.body_bytes += nbytes

    def release_body(self, nbytes: int) -> None:
        self.body_bytes -= nbytes


def seconds_until(deadline: float, now: float) -> float:
    return max(0.0, deadline - now) if math.isfinite(deadline) else math.inf
