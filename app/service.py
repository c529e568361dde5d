"""The protocol-neutral data plane: from image bytes to ranked classes, knowing nothing of HTTP."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from app.errors import InvalidImage, RequestTimeout
from app.metrics import Metrics
from app.preprocess import load_and_preprocess
from app.repository import ModelRepository, ModelVersion
from app.settings import Settings


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

    def resolve(self, model: str | None, version: int | None) -> ModelVersion:
        return self.repository.get(model, version)

    async def _decode(self, target: ModelVersion, images: list[bytes]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        fn = partial(load_and_preprocess, spec=target.config.preprocessing, max_pixels=self.settings.max_image_pixels)
        tasks = [loop.run_in_executor(self._decoder, fn, data) for data in images]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for index, result in enumerate(results):
            if isinstance(result, InvalidImage) and len(images) > 1:
                raise InvalidImage(f"image {index + 1} of {len(images)}: {result.message}")
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, np.ndarray)]

    async def predict(self, target: ModelVersion, images: list[bytes], k: int) -> PredictResult:
        """Decode and validate every image, then batch them with other requests' images.

        Each image is decoded before it joins a batch, so a bad one fails only its own request.
        The whole request is bounded by ``request_timeout_s``; cancelling it drops its images
        from the queue.
        """
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                inputs = await self._decode(target, images)
                outputs = await self._submit_all(target, inputs)
        except TimeoutError:
            raise RequestTimeout(
                f"no result within {self.settings.request_timeout_s:g}s (PDSERVE_REQUEST_TIMEOUT_S)"
            ) from None
        softmax = not target.config.output.softmax_applied
        ranked = [top_k(_softmax(o) if softmax else o, k, target.labels) for o in outputs]
        return PredictResult(target.name, target.version, ranked)

    @staticmethod
    async def _submit_all(target: ModelVersion, inputs: list[np.ndarray]) -> list[np.ndarray]:
        assert target.batcher is not None
        tasks = [asyncio.ensure_future(target.batcher.submit(x)) for x in inputs]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one image failed (e.g. queue full): take its siblings off the queue
                task.cancel()
            raise

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)
