"""The server's drain, as three phases.

    SERVING --drain--> DRAINING --refuse--> REFUSING

DRAINING: ``/readyz`` answers 503 so load balancers stop sending, but requests are still taken
(they may be in flight from a balancer that has not noticed yet). REFUSING: new predict requests
get 503 ``shutting_down``; those already accepted are answered, then the workers stop.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from pdserve.errors import ShuttingDown


class Phase(StrEnum):
    SERVING = "SERVING"
    DRAINING = "DRAINING"
    REFUSING = "REFUSING"


class Lifecycle:
    def __init__(self) -> None:
        self.phase = Phase.SERVING
        self._on_refuse: list[Callable[[], None]] = []

    def on_refuse(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when new requests start being refused (e.g. to flush forming batches)."""
        self._on_refuse.append(callback)

    def drain(self) -> None:
        if self.phase is Phase.SERVING:
            self.phase = Phase.DRAINING

    def refuse(self) -> None:
        if self.phase is Phase.REFUSING:
            return
        self.phase = Phase.REFUSING
        for callback in self._on_refuse:
            callback()

    @property
    def ready(self) -> bool:
        return self.phase is Phase.SERVING

    def check_accepting(self) -> None:
        if self.phase is Phase.REFUSING:
            raise ShuttingDown("server is shutting down; retry on another replica")
