"""The kind contract: what a model kind knows, and nothing else does.

A kind (``config.yaml``'s ``kind:``) turns a request into work for the batcher, runs that work in
its workers, says what its inputs and outputs are, and turns outputs back into answers. It is
LitServe's ``setup / decode_request / batch / predict / encode_response``, split where pdserve's
processes split:

========================  ==========================================  ===========================
step                      method                                      runs in
========================  ==========================================  ===========================
setup                     ``worker(spec).setup()``                    the worker process
decode                    ``from_images`` / ``from_tensors``          the HTTP process
batch                     ``batching(config).run(pool, items)``       the HTTP process (the pool)
                          ``transport(config)``                       both ends of the pipe
predict                   ``worker(spec).run(payload)``               the worker process
encode                    ``finish``, ``to_json``, ``to_tensors``     the HTTP process
metadata                  ``inputs`` / ``outputs``                    the HTTP process
========================  ==========================================  ===========================

Kinds speak neutral types (arrays, byte strings, dicts): the HTTP layer turns them into REST or
v2 (KServe / Triton) bodies. A new kind is one module with a ``ModelKind`` subclass, registered in
``kinds/__init__.py``; ``docs/architecture.md`` has an example.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from pdserve.errors import BadRequest, ImageTooLarge, InvalidImage
from pdserve.metrics import Metrics
from pdserve.model_config import ModelConfig
from pdserve.runtime.contract import Batching, KindWorker, Transport
from pdserve.runtime.signature import Signature, TensorSpec

BYTES = "bytes"  # TensorSpec.dtype of a tensor of byte strings (v2 BYTES), e.g. encoded images
Feeds = dict[str, np.ndarray]
# Another model of the repository, as a pipeline kind calls it: a single-input model's input (with
# its batch dimension) through that model's own batcher, its first output back. Concurrent calls
# batch together there with everyone else's requests.
Stage = Callable[[np.ndarray], Awaitable[np.ndarray]]


class Pipeline(Protocol):
    """A pipeline kind's batch, run in the HTTP process over other models (``ModelKind.stages``)."""

    async def run(self, items: Sequence[Any], stages: Mapping[str, Stage]) -> list[Any]:
        """One output per item (an ``Exception`` fails that item alone)."""
        ...


class Version(Protocol):
    """What a kind may read of the model version it serves (``repository.ModelVersion``)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def config(self) -> ModelConfig: ...
    @property
    def labels(self) -> list[str] | None: ...
    @property
    def signature(self) -> Signature | None: ...
    @property
    def output_shape(self) -> tuple[int, ...] | None: ...


@dataclass(frozen=True)
class NamedTensor:
    """One input as a protocol carried it: numbers (``array``) or byte strings (``elements``)."""

    name: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    elements: list[bytes] | None = None


@dataclass(frozen=True)
class WantedOutput:
    """An output the client asked for; ``classification``: Triton's top-k strings instead of numbers."""

    name: str
    classification: int | None = None


@dataclass(frozen=True)
class DecodeContext:
    """What decoding may use: the server's decode threads and limits."""

    executor: Executor
    max_image_pixels: int
    max_items: int


@dataclass(frozen=True)
class Work:
    """A decoded request: ``count`` items are admitted first; ``prepare`` (awaited after admission,
    under the deadline) gives the items the batcher takes, one output each."""

    count: int
    prepare: Callable[[], Awaitable[list[Any]]]
    params: dict[str, Any] = field(default_factory=dict)


# A lone image this small is decoded on the event loop: handing it to a decode thread and back costs
# more CPU than decoding it (``benchmarks/null_model.py``); a 4 KiB JPEG decodes in tens of microseconds.
INLINE_DECODE_BYTES = 4096


def decoded_images(images: list[bytes], decode: Callable[[bytes], Any], ctx: DecodeContext) -> Work:
    """Work whose items are ``decode(image)`` for each encoded image, run in the server's decode threads
    after admission; a bad image fails the request naming which one ("image 2 of 3: ...")."""

    async def prepare() -> list[Any]:
        if len(images) == 1 and len(images[0]) <= INLINE_DECODE_BYTES:
            return [decode(images[0])]
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(ctx.executor, decode, data) for data in images), return_exceptions=True
        )
        for index, result in enumerate(results):
            if isinstance(result, (InvalidImage, ImageTooLarge)) and len(images) > 1:
                raise type(result)(f"image {index + 1} of {len(images)}: {result.message}")
            if isinstance(result, BaseException):
                raise result
        return list(results)

    return Work(len(images), prepare)


def ready_items(items: list[Any]) -> Callable[[], Awaitable[list[Any]]]:
    async def prepare() -> list[Any]:
        return items

    return prepare


class ModelKind(ABC):
    """One kind of model. Subclasses set ``name`` and ``worker`` and implement the methods."""

    name: ClassVar[str]
    worker: ClassVar[type[KindWorker]]
    pads_batches: ClassVar[bool] = False  # fixed-shape batches padded to warmed sizes (config.batch_sizes)

    # ---- batch: the runtime half (contract.KindRuntime) ---------------------------------------
    def transport(self, config: ModelConfig) -> Transport:
        raise NotImplementedError(f"kind {self.name!r} runs no worker processes")

    def batching(self, config: ModelConfig) -> Batching:
        raise NotImplementedError(f"kind {self.name!r} runs no worker processes")

    # ---- or, a pipeline over other models --------------------------------------------------------
    def stages(self, config: ModelConfig) -> dict[str, str]:
        """Role -> model name of the repository's models this kind runs on; {} for a kind with workers.

        A kind with stages has no program and no workers of its own: its batches run in the HTTP
        process (``pipeline``), and each stage's model batches the stage's work with everyone else's."""
        return {}

    def pipeline(self, version: Version, metrics: Metrics) -> Pipeline:
        raise NotImplementedError(f"kind {self.name!r} is not a pipeline")

    def settings(self, config: ModelConfig) -> dict[str, Any]:
        """The kind's own section of config.yaml, as plain data ({} for a kind without one)."""
        return {}

    # ---- metadata ------------------------------------------------------------------------------
    @abstractmethod
    def inputs(self, version: Version) -> list[TensorSpec]:
        """The inputs a client may send, by name (-1: any size; the first dimension is the batch)."""

    @abstractmethod
    def outputs(self, version: Version) -> list[TensorSpec]: ...

    # ---- decode ----------------------------------------------------------------------------------
    def from_images(self, version: Version, images: list[bytes], ctx: DecodeContext) -> Work:
        """Encoded images (REST ``/predict``)."""
        raise BadRequest(f"model {version.name!r} takes tensors: use POST /v2/models/{version.name}/infer")

    @abstractmethod
    def from_tensors(self, version: Version, tensors: Sequence[NamedTensor], ctx: DecodeContext) -> Work:
        """Named tensors (v2 ``infer``)."""

    # ---- encode ----------------------------------------------------------------------------------
    def finish(self, version: Version, outputs: list[Any]) -> list[Any]:
        """The items' outputs as both encoders take them (e.g. probabilities from logits)."""
        return outputs

    def to_json(self, version: Version, outputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        """One JSON object per image for REST ``/predict``."""
        raise BadRequest(f"model {version.name!r} answers tensors only: use POST /v2/models/{version.name}/infer")

    @abstractmethod
    def to_tensors(
        self, version: Version, outputs: list[Any], wanted: Sequence[WantedOutput]
    ) -> list[tuple[str, np.ndarray]]:
        """The outputs asked for (all when ``wanted`` is empty), named, as v2 returns them; an object
        array of ``bytes`` is a BYTES tensor."""
