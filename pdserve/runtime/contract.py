"""What the runtime needs of a model kind: its half of the kind contract (``pdserve/kinds``).

A kind gives the runtime three things, and the runtime knows nothing else about it:

- a ``KindWorker`` class, built in the worker process from the ``WorkerSpec``: ``setup()`` loads
  the predictor (and warms up, validates, ...) and reports ``Ready``; ``run(payload)`` runs one
  batch; ``attach(message)`` takes what the parent sends once after ready (e.g. a shared-memory
  segment for outputs);
- a ``Transport`` per worker process, in the parent: how a batch crosses to the worker and its
  results come back (shared memory for fixed-shape images, the pipe for tensors);
- a ``Batching`` per model version, in the parent: how the pool runs a batch of requests on an
  instance (pad to a warmed size, or stack tensors and split them back, ...).

One worker loop (``worker.py``), one process handle (``process.py``) and one pool (``pool.py``)
serve every kind through these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pdserve.model_config import ModelConfig
from pdserve.runtime.signature import Signature

if TYPE_CHECKING:
    from pdserve.runtime.pool import WorkerPool


@dataclass(frozen=True)
class Ready:
    """What a worker reports once it has loaded (and, for kinds that do, warmed up)."""

    output_shape: tuple[int, ...] = ()  # one item's output, for kinds with fixed-shape outputs
    slowest_warmup_s: float = 0.0  # 0: no warm-up ran (the compute timeout then has no measure)
    signature: Signature | None = None  # named inputs and outputs, for kinds that serve tensors
    validation: dict[str, Any] | None = None  # an INT8 version's check against FP32 (validation.py)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, pickled once at spawn."""

    model: str
    version_dir: Path
    config: ModelConfig
    worker: type[KindWorker]  # pickled by reference: the kind's module is imported in the child
    shared: tuple[str, ...] = field(default=())  # the transport's shared-memory segments, by name
    nice: int = 0
    idle_spin_s: float = 0.0  # after a batch, poll for the next this long before sleeping (worker.next_message)


class InputRefused(Exception):
    """Raised by ``KindWorker.run`` when the client's input, not the model, is at fault (-> 400)."""


class KindWorker(Protocol):
    """A kind's code in the worker process."""

    def __init__(self, spec: WorkerSpec) -> None: ...

    def setup(self) -> Ready:
        """Load the predictor; anything it raises fails the load with its message."""
        ...

    def attach(self, message: Any) -> None:
        """What the parent's transport sends once, after ``Ready`` (``Transport.after_ready``)."""
        ...

    def run(self, payload: Any) -> tuple[Any, float]:
        """Run one batch; return what goes back through the pipe, and the compute seconds."""
        ...

    def close(self) -> None: ...


class Transport(Protocol):
    """A kind's code in the parent, one per worker process: the batch's way there and back."""

    shared: tuple[str, ...]  # segment names the worker attaches (WorkerSpec.shared)

    def encode(self, payload: Any) -> Any:
        """What crosses the pipe for ``payload`` (the rest, if any, goes through shared memory)."""
        ...

    def decode(self, result: Any, payload: Any) -> Any:
        """The batch's outputs from what the worker sent back."""
        ...

    def after_ready(self, ready: Ready) -> Any | None:
        """A message for ``KindWorker.attach``, or None."""
        ...

    def close(self) -> None: ...


class Batching(Protocol):
    """A kind's way of running a batch of requests on the pool's instances, one per model version."""

    async def run(self, pool: WorkerPool, items: Sequence[Any]) -> list[Any]:
        """One output per item, in order; an ``Exception`` in place of an item's output fails only
        that item (``DynamicBatcher`` raises it to that caller alone)."""
        ...


class KindRuntime(Protocol):
    """The runtime half of a kind, as the pool and the worker processes use it."""

    @property
    def worker(self) -> type[KindWorker]: ...

    def transport(self, config: ModelConfig) -> Transport: ...

    def batching(self, config: ModelConfig) -> Batching: ...
