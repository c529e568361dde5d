"""The protocol-neutral data plane: from image bytes to ranked classes, knowing nothing of HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.admission import ProcessLimits, seconds_until
from pdserve.batching import DynamicBatcher
from pdserve.errors import BadRequest, ImageTooLarge, InvalidImage, RequestTimeout, TooManyImages
from pdserve.lifecycle import Lifecycle
from pdserve.metrics import Metrics
from pdserve.preprocess import load_and_crop
from pdserve.repository import ModelEntry, ModelRepository, ModelState, ModelVersion
from pdserve.request_log import current as current_request
from pdserve.runtime.tensor_model import Signature, TensorSpec
from pdserve.settings import Settings

# The neutral types the HTTP layer may use; it imports them from here, never from the layers below.
__all__ = ["InferenceService", "ModelEntry", "ModelState", "ModelVersion", "PredictResult", "Signature", "TensorSpec"]

Batcher = DynamicBatcher[Any, Any]


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class PredictResult:
    model: str
    version: int
    predictions: list[list[Prediction]]  # one ranked list per input image, in input order


def top_k(probs: np.ndarray, k: int, labels: list[str] | None) -> list[Prediction]:
    k = min(k, probs.shape[-1])
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [Prediction(int(i), labels[i] if labels and i < len(labels) else str(int(i)), float(probs[i])) for i in idx]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    out: np.ndarray = e / e.sum()
    return out


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

    def index(self) -> list[dict[str, str]]:
        return self.repository.index()

    async def load_model(self, name: str) -> None:
        await self.repository.load_model(name)

    async def unload_model(self, name: str) -> None:
        await self.repository.unload_model(name)

    async def _decode(self, target: ModelVersion, images: list[bytes]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        fn = partial(load_and_crop, spec=target.config.preprocessing, max_pixels=self.settings.max_image_pixels)
        tasks = [loop.run_in_executor(self._decoder, fn, data) for data in images]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for index, result in enumerate(results):
            if isinstance(result, (InvalidImage, ImageTooLarge)) and len(images) > 1:
                raise type(result)(f"image {index + 1} of {len(images)}: {result.message}")
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, np.ndarray)]

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

    async def infer_images(self, target: ModelVersion, images: list[bytes], deadline: float) -> list[np.ndarray]:
        """Each encoded image's output (probabilities), in order.

        Admission comes first, before any decoding. Each image is decoded and validated before it
        joins a batch, so a bad one fails only its own request. At ``deadline`` (``loop.time()``)
        the request gets 504, whether decoding or queued, and its images leave the queue unexecuted.
        """
        self._check_kind(target, "image")
        outputs = await self._infer(target, len(images), lambda: self._decode(target, images), deadline)
        return self._probabilities(target, outputs)

    async def infer_tensors(self, target: ModelVersion, batch: np.ndarray, deadline: float) -> list[np.ndarray]:
        """Outputs for already-preprocessed inputs: float32 ``[N, *input.shape]``."""
        self._check_kind(target, "image")
        expected = tuple(target.config.input.shape)
        if batch.ndim != len(expected) + 1 or tuple(batch.shape[1:]) != expected:
            raise BadRequest(f"input shape {list(batch.shape)} does not match [N, {', '.join(map(str, expected))}]")
        if batch.dtype != np.float32:
            raise BadRequest(f"input datatype is {batch.dtype}, the model takes float32")
        if not 1 <= len(batch) <= self.settings.max_images_per_request:
            raise TooManyImages(f"{len(batch)} inputs; send 1 to {self.settings.max_images_per_request}")

        async def rows() -> list[np.ndarray]:
            return list(np.ascontiguousarray(batch))

        outputs = await self._infer(target, len(batch), rows, deadline)
        return self._probabilities(target, outputs)

    async def infer_feeds(
        self, target: ModelVersion, feeds: dict[str, np.ndarray], deadline: float
    ) -> dict[str, np.ndarray]:
        """A tensor model: named inputs in (checked against the model's own signature), every output out."""
        self._check_kind(target, "tensor")
        assert target.pool is not None
        signature = target.pool.signature
        assert signature is not None
        wanted = {s.name: s for s in signature.inputs}
        unknown, missing = sorted(set(feeds) - set(wanted)), sorted(set(wanted) - set(feeds))
        if unknown or missing:
            raise BadRequest(
                f"model {target.name!r} takes inputs {sorted(wanted)}; unknown {unknown}, missing {missing}"
            )
        for name, array in feeds.items():
            spec = wanted[name]
            if array.dtype != np.dtype(spec.dtype):
                raise BadRequest(f"input {name!r} is {array.dtype}, the model takes {spec.dtype}")
            fits = len(array.shape) == len(spec.shape)
            if not fits or any(d not in (-1, a) for d, a in zip(spec.shape, array.shape, strict=True)):
                raise BadRequest(f"input {name!r} has shape {list(array.shape)}, the model takes {list(spec.shape)}")

        async def one() -> list[dict[str, np.ndarray]]:
            return [feeds]

        (outputs,) = await self._infer(target, 1, one, deadline)
        return dict(outputs)

    @staticmethod
    def _check_kind(target: ModelVersion, kind: str) -> None:
        if target.config.kind != kind:
            if kind == "image":
                raise BadRequest(f"model {target.name!r} takes tensors: use POST /v2/models/{target.name}/infer")
            raise BadRequest(f"model {target.name!r} is an image model")

    @staticmethod
    def _probabilities(target: ModelVersion, outputs: list[np.ndarray]) -> list[np.ndarray]:
        if not target.config.output.softmax_applied:
            return [_softmax(o) for o in outputs]
        return outputs

    async def _infer(
        self,
        target: ModelVersion,
        count: int,
        prepare: Callable[[], Awaitable[list[Any]]],
        deadline: float,
    ) -> list[Any]:
        admission, batcher = target.admission, target.batcher
        assert admission is not None
        assert batcher is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        admission.admit(count, seconds_until(deadline, started))
        record = current_request()
        if record is not None:
            record.images = count
        stage, ok = "decoding", False
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    inputs = await prepare()
                finally:
                    admission.decoded(count)
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

    async def predict(self, target: ModelVersion, images: list[bytes], k: int, deadline: float) -> PredictResult:
        """The ``k`` best classes of each image."""
        outputs = await self.infer_images(target, images, deadline)
        return PredictResult(target.name, target.version, [top_k(o, k, target.labels) for o in outputs])

    @staticmethod
    async def _submit_all(batcher: Batcher, inputs: list[Any], deadline: float) -> list[Any]:
        tasks = [asyncio.ensure_future(batcher.submit(x, deadline)) for x in inputs]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one image failed, or the deadline passed: take its siblings off the queue
                task.cancel()
            raise

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)
