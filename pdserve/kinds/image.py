"""``kind: image``: an image classifier fed encoded images (or preprocessed float32 tensors).

Decode: each image is decoded, resized and cropped in the server's decode threads before it joins
a batch (a bad image fails only its own request). Batch: fixed-shape rows padded to warmed sizes,
through shared memory (``image_worker.py``). Encode: probabilities (softmax unless the model applied
it), REST's ranked classes, v2's ``probabilities`` tensor or Triton's ``classification`` strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from pdserve.errors import BadRequest, TooManyImages
from pdserve.kinds.base import (
    BYTES,
    DecodeContext,
    ModelKind,
    NamedTensor,
    Version,
    WantedOutput,
    Work,
    decoded_images,
    ready_items,
)
from pdserve.kinds.image_worker import ImageTransport, ImageWorker
from pdserve.model_config import ModelConfig
from pdserve.preprocess import load_and_crop
from pdserve.runtime.pool import WorkerPool
from pdserve.runtime.signature import TensorSpec

IMAGE_INPUT = "image"
PROBABILITIES = "probabilities"
CLASSIFICATION = "classification"
DEFAULT_CLASSES = 5


class Prediction:
    __slots__ = ("class_id", "label", "score")

    def __init__(self, class_id: int, label: str, score: float) -> None:
        self.class_id, self.label, self.score = class_id, label, score

    def as_dict(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "label": self.label, "score": self.score}


def top_k(probs: np.ndarray, k: int, labels: list[str] | None) -> list[Prediction]:
    k = min(k, probs.shape[-1])
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [Prediction(int(i), labels[i] if labels and i < len(labels) else str(int(i)), float(probs[i])) for i in idx]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    out: np.ndarray = e / e.sum()
    return out


class ImageBatching:
    """Rows padded up to a warmed batch size, one run on one instance."""

    async def run(self, pool: WorkerPool, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        inst = await pool.acquire()
        size = pool.padded(len(rows))
        outputs: list[np.ndarray] = await pool.run_on(inst, (rows, size), len(rows), size)
        return outputs


class ImageKind(ModelKind):
    name = "image"
    worker = ImageWorker
    pads_batches = True

    def transport(self, config: ModelConfig) -> ImageTransport:
        return ImageTransport(config)

    def batching(self, config: ModelConfig) -> ImageBatching:
        return ImageBatching()

    # ---- metadata ------------------------------------------------------------------------------
    def inputs(self, version: Version) -> list[TensorSpec]:
        c = version.config
        return [TensorSpec(IMAGE_INPUT, BYTES, (-1,)), TensorSpec(c.input.name, "float32", (-1, *c.input.shape))]

    def outputs(self, version: Version) -> list[TensorSpec]:
        shape = version.output_shape
        classes = tuple(shape) if shape else (-1,)
        return [TensorSpec(PROBABILITIES, "float32", (-1, *classes)), TensorSpec(CLASSIFICATION, BYTES, (-1, -1))]

    # ---- decode ----------------------------------------------------------------------------------
    def from_images(self, version: Version, images: list[bytes], ctx: DecodeContext) -> Work:
        fn = partial(load_and_crop, spec=version.config.preprocessing, max_pixels=ctx.max_image_pixels)
        return decoded_images(images, fn, ctx)

    def from_tensors(self, version: Version, tensors: Sequence[NamedTensor], ctx: DecodeContext) -> Work:
        input_name = version.config.input.name
        if len(tensors) != 1:
            raise BadRequest(f"send one input, {IMAGE_INPUT!r} or {input_name!r}; got {[t.name for t in tensors]}")
        tensor = tensors[0]
        if tensor.name == IMAGE_INPUT:
            if tensor.elements is None:
                raise BadRequest(f"input {IMAGE_INPUT!r} must be BYTES (encoded images)")
            if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
                raise BadRequest(f"input {IMAGE_INPUT!r} must have shape [N] or [N, 1], not {list(tensor.shape)}")
            return self.from_images(version, tensor.elements, ctx)
        if tensor.name != input_name:
            raise BadRequest(
                f"unknown input {tensor.name!r}; model {version.name!r} takes {IMAGE_INPUT!r} (BYTES, encoded "
                f"images) or {input_name!r} (FP32 {[-1, *version.config.input.shape]})"
            )
        batch = tensor.array
        if batch is None or batch.dtype != np.float32:
            sent = "BYTES" if batch is None else batch.dtype.name
            raise BadRequest(f"input {tensor.name!r} must be FP32, not {sent}")
        expected = tuple(version.config.input.shape)
        if batch.ndim != len(expected) + 1 or tuple(batch.shape[1:]) != expected:
            raise BadRequest(f"input shape {list(batch.shape)} does not match [N, {', '.join(map(str, expected))}]")
        if not 1 <= len(batch) <= ctx.max_items:
            raise TooManyImages(f"{len(batch)} inputs; send 1 to {ctx.max_items}")
        return Work(len(batch), ready_items(list(np.ascontiguousarray(batch))))

    # ---- encode ----------------------------------------------------------------------------------
    def finish(self, version: Version, outputs: list[Any]) -> list[np.ndarray]:
        if not version.config.output.softmax_applied:
            return [_softmax(o) for o in outputs]
        return outputs

    def to_json(self, version: Version, outputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        k = int(params.get("top_k", DEFAULT_CLASSES))
        return [{"predictions": [p.as_dict() for p in top_k(o, k, version.labels)]} for o in outputs]

    def to_tensors(
        self, version: Version, outputs: list[Any], wanted: Sequence[WantedOutput]
    ) -> list[tuple[str, np.ndarray]]:
        probs = np.stack(outputs)
        result: list[tuple[str, np.ndarray]] = []
        for want in wanted or [WantedOutput(PROBABILITIES)]:
            if want.name not in (PROBABILITIES, CLASSIFICATION):
                raise BadRequest(f"unknown output {want.name!r}; outputs: {[PROBABILITIES, CLASSIFICATION]}")
            k = want.classification or (DEFAULT_CLASSES if want.name == CLASSIFICATION else None)
            if k is None:
                result.append((want.name, probs))
            else:
                result.append((want.name, self._classes(probs, min(k, probs.shape[1]), version.labels)))
        return result

    @staticmethod
    def _classes(probs: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
        """Triton's classification extension: ``"score:index:label"`` per class, ``[N, k]`` byte strings."""
        out = np.empty((len(probs), k), dtype=object)
        for i, row in enumerate(probs):
            for j, p in enumerate(top_k(row, k, labels)):
                label = f":{p.label}" if labels else ""
                out[i, j] = f"{p.score:f}:{p.class_id}{label}".encode()
        return out
