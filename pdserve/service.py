"""The protocol-neutral data plane: from a request's images or tensors to its outputs, knowing
nothing of HTTP. The HTTP layer reaches the repository and the runtime only through here; what a
model takes and answers is its kind's (``pdserve/kinds``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.admission import ProcessLimits, seconds_until
from pdserve.batching import DynamicBatcher
from pdserve.errors import RequestTimeout
from pdserve.kinds.base import BYTES, DecodeContext, NamedTensor, WantedOutput, Work
from pdserve.lifecycle import Lifecycle
from pdserve.metrics import Metrics
from pdserve.repository import ModelEntry, ModelRepository, ModelState, ModelVersion
from pdserve.request_log import current as current_request
from pdserve.runtime.signature import Signature, TensorSpec
from pdserve.settings import Settings

# The neutral types the HTTP layer may use; it imports them from here, never from the layers below.
__all__ = [
    "BYTES",
    "InferenceService",
    "ModelEntry",
    "ModelState",
    "ModelVersion",
    "NamedTensor",
    "Signature",
    "TensorSpec",
    "WantedOutput",
]

Batcher = DynamicBatcher[Any, Any]


class InferenceService:
    def __init__(self, repository: ModelRepository, settings: Settings, metrics: Metrics) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self._decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="pdserve-decode")
        self.lifecycle = Lifecycle()
        # Nothing new will join a forming batch once requests are refused: run them now.
        self.lifecycle.on_refuse(repository.flush_batches)
        self.limits = ProcessLimits(settings.max_inflight_requests, settings.max_inflight_body_bytes)

    def resolve(self, model: str | None, version: int | None) -> ModelVersion:
        return self.repository.get(model, version)

    # ---- the repository, as the protocols see it -----------------------------------------------
    def models(self) -> list[ModelEntry]:
        """Every model folder of the repository, loaded or not, by name."""
        return list(self.repository.models.values())

    def find_model(self, name: str) -> ModelEntry | None:
        return self.repository.models.get(name)

    def model_names(self) -> list[str]:
        return sorted(self.repository.models)

    @property
    def repository_root(self) -> Path:
        return self.repository.root

    def catalog(self) -> list[tuple[str, ModelEntry | None]]:
        """Every model folder by name, with its entry if loaded (``ModelRepository.catalog``)."""
        return self.repository.catalog()

    @staticmethod
    def inputs(target: ModelVersion) -> list[TensorSpec]:
        """What the version takes, by name, as its kind declares it."""
        return target.kind.inputs(target)

    @staticmethod
    def outputs(target: ModelVersion) -> list[TensorSpec]:
        return target.kind.outputs(target)

    @staticmethod
    def kind_of(target: ModelVersion) -> str:
        return target.config.kind

    @staticmethod
    def kind_settings(target: ModelVersion) -> dict[str, Any]:
        """The version's kind-specific settings (e.g. config.yaml's ocr section), as plain data."""
        return target.kind.settings(target.config)

    async def load_model(self, name: str) -> None:
        await self.repository.load_model(name)

    async def unload_model(self, name: str) -> None:
        await self.repository.unload_model(name)

    @property
    def _decoding(self) -> DecodeContext:
        s = self.settings
        return DecodeContext(self._decoder, s.max_image_pixels, s.max_images_per_request)

    def deadline(self, target: ModelVersion, requested_ms: float | None) -> float:
        """The request's deadline in ``loop.time()``: asked for, else the model's, else the server's."""
        if requested_ms is not None:
            seconds = requested_ms / 1000
        elif target.config.timeout_ms is not None:
            seconds = target.config.timeout_ms / 1000
        else:
            seconds = self.settings.request_timeout_s
        return asyncio.get_running_loop().time() + min(seconds, self.settings.max_request_timeout_s)

    def check_room(self, target: ModelVersion) -> None:
        """Refuse before reading the body when the model has no room for even one more image."""
        if target.admission is not None:
            target.admission.check_room()

    async def predict(
        self, target: ModelVersion, images: list[bytes], params: dict[str, Any], deadline: float
    ) -> list[dict[str, Any]]:
        """REST: one JSON object per encoded image, as the model's kind answers (classes, boxes, ...).

        Admission comes first, before any decoding. Each image is decoded and validated before it
        joins a batch, so a bad one fails only its own request. At ``deadline`` (``loop.time()``)
        the request gets 504, whether decoding or queued, and its images leave the queue unexecuted.
        """
        kind = target.kind
        work = kind.from_images(target, images, self._decoding)
        outputs = kind.finish(target, await self._infer(target, work, deadline))
        return kind.to_json(target, outputs, params)

    async def infer(
        self,
        target: ModelVersion,
        tensors: Sequence[NamedTensor],
        wanted: Sequence[WantedOutput],
        deadline: float,
    ) -> list[tuple[str, np.ndarray]]:
        """v2: named tensors in, the named outputs asked for out (an object array of bytes: BYTES)."""
        kind = target.kind
        work = kind.from_tensors(target, tensors, self._decoding)
        outputs = kind.finish(target, await self._infer(target, work, deadline))
        return kind.to_tensors(target, outputs, wanted)

    async def _infer(self, target: ModelVersion, work: Work, deadline: float) -> list[Any]:
        admission, batcher = target.admission, target.batcher
        assert admission is not None
        assert batcher is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        admission.admit(work.count, seconds_until(deadline, started))
        record = current_request()
        if record is not None:
            record.images = work.count
        stage, ok = "decoding", False
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    inputs = await work.prepare()
                finally:
                    admission.decoded(work.count)
                stage = "batching"
                if record is not None:
                    record.queued()
                outputs = await self._submit_all(batcher, inputs, deadline)
            ok = True
        except TimeoutError:
            self.metrics.expired.labels(target.name, stage).inc()
            raise RequestTimeout(f"no result within the request's deadline (it expired while {stage})") from None
        finally:
            target.stats.request_done(loop.time() - started, ok)
        return outputs

    @staticmethod
    async def _submit_all(batcher: Batcher, inputs: list[Any], deadline: float) -> list[Any]:
        if len(inputs) == 1:  # the common case, without a task of its own
            return [await batcher.submit(inputs[0], deadline)]
        tasks = [asyncio.ensure_future(batcher.submit(x, deadline)) for x in inputs]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one image failed, or the deadline passed: take its siblings off the queue
                task.cancel()
            raise

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)
