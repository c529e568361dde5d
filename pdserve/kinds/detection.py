"""``kind: detection``: a PaddleDetection export (PP-YOLOE, PicoDet, RT-DETR, ...) fed encoded images.

Decode: each image is decoded and resized as PaddleDetection's deploy code does (``Resize``), in the
server's decode threads, before it joins a batch (a bad image fails only its own request). Batch:
the images of concurrent requests run as one batch, each with its ``im_shape`` and
``scale_factor`` (``detection_worker.py``), and come back split by ``bbox_num``. Encode: REST's
boxes over the request's ``score_threshold``; v2's ``bbox`` and ``bbox_num`` as the model gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from pdserve.errors import BadRequest
from pdserve.kinds.base import BYTES, DecodeContext, ModelKind, NamedTensor, Version, WantedOutput, Work, decoded_images
from pdserve.kinds.detection_worker import DetectionItem, DetectionWorker
from pdserve.kinds.tensor import PipeTransport
from pdserve.model_config import Detection, ModelConfig
from pdserve.preprocess import decode_image, resize_for_detection
from pdserve.runtime.pool import WorkerPool
from pdserve.runtime.signature import TensorSpec

IMAGE_INPUT = "image"
BBOX, BBOX_NUM = "bbox", "bbox_num"


def decode_for_detection(data: bytes, spec: Detection, max_pixels: int) -> DetectionItem:
    return DetectionItem(*resize_for_detection(decode_image(data, max_pixels), spec))


def boxes_json(rows: np.ndarray, threshold: float, labels: list[str] | None) -> list[dict[str, Any]]:
    """``[class_id, score, x1, y1, x2, y2]`` rows over ``threshold`` (and with a class: exports pad
    an image without boxes with class -1), best first."""
    kept = rows[(rows[:, 1] >= threshold) & (rows[:, 0] >= 0)]
    kept = kept[np.argsort(-kept[:, 1], kind="stable")]
    out = []
    for row in kept:
        class_id = int(row[0])
        label = labels[class_id] if labels and class_id < len(labels) else str(class_id)
        out.append({"class_id": class_id, "label": label, "score": float(row[1]), "box": [float(v) for v in row[2:]]})
    return out


class DetectionBatching:
    """Every request's images in one run on one instance; the worker splits the boxes back per image."""

    async def run(self, pool: WorkerPool, items: Sequence[DetectionItem]) -> list[np.ndarray]:
        inst = await pool.acquire()
        outputs: list[np.ndarray] = await pool.run_on(inst, list(items), len(items), len(items))
        return outputs


class DetectionKind(ModelKind):
    name = "detection"
    worker = DetectionWorker

    def transport(self, config: ModelConfig) -> PipeTransport:
        return PipeTransport()

    def batching(self, config: ModelConfig) -> DetectionBatching:
        return DetectionBatching()

    # ---- metadata ------------------------------------------------------------------------------
    def inputs(self, version: Version) -> list[TensorSpec]:
        return [TensorSpec(IMAGE_INPUT, BYTES, (-1,))]

    def outputs(self, version: Version) -> list[TensorSpec]:
        return [TensorSpec(BBOX, "float32", (-1, 6)), TensorSpec(BBOX_NUM, "int32", (-1,))]

    # ---- decode ----------------------------------------------------------------------------------
    def from_images(self, version: Version, images: list[bytes], ctx: DecodeContext) -> Work:
        fn = partial(decode_for_detection, spec=version.config.detection, max_pixels=ctx.max_image_pixels)
        return decoded_images(images, fn, ctx)

    def from_tensors(self, version: Version, tensors: Sequence[NamedTensor], ctx: DecodeContext) -> Work:
        if len(tensors) != 1 or tensors[0].name != IMAGE_INPUT or tensors[0].elements is None:
            raise BadRequest(
                f"model {version.name!r} takes one BYTES input {IMAGE_INPUT!r} (encoded images); for the raw "
                "tensors image, im_shape and scale_factor, serve the same version folder as a model of kind: tensor"
            )
        tensor = tensors[0]
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise BadRequest(f"input {IMAGE_INPUT!r} must have shape [N] or [N, 1], not {list(tensor.shape)}")
        assert tensor.elements is not None
        return self.from_images(version, tensor.elements, ctx)

    # ---- encode ----------------------------------------------------------------------------------
    def to_json(self, version: Version, outputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        threshold = params.get("score_threshold")
        if threshold is None:
            threshold = version.config.detection.score_threshold
        return [{"boxes": boxes_json(rows, float(threshold), version.labels)} for rows in outputs]

    def to_tensors(
        self, version: Version, outputs: list[Any], wanted: Sequence[WantedOutput]
    ) -> list[tuple[str, np.ndarray]]:
        named = {
            BBOX: np.concatenate(outputs).astype(np.float32, copy=False).reshape(-1, 6),
            BBOX_NUM: np.array([len(rows) for rows in outputs], np.int32),
        }
        chosen = []
        for want in wanted or [WantedOutput(n) for n in named]:
            if want.name not in named:
                raise BadRequest(f"unknown output {want.name!r}; outputs: {sorted(named)}")
            if want.classification is not None:
                raise BadRequest("parameters.classification applies to image classifiers only")
            chosen.append((want.name, named[want.name]))
        return chosen
