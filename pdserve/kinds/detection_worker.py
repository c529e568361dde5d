"""The detector in its worker process: a batch of resized images in, each image's boxes out.

Images arrive as uint8 HWC (resized in the HTTP process, a quarter of float32's bytes) with their
``im_shape`` and ``scale_factor``; the worker normalises and pads them to one shape, runs the batch
once, and splits ``bbox`` back per image by ``bbox_num``. The model's boxes are already in the
original image's pixels: PaddleDetection's exports divide by ``scale_factor`` themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdserve.errors import ModelLoadError, PdserveError
from pdserve.preprocess import DetectionNormalizer
from pdserve.runtime.contract import Ready, WorkerSpec
from pdserve.runtime.predictor_config import build_predictor, plan_predictor
from pdserve.runtime.signature import Signature, TensorSpec, read_signature

IMAGE, IM_SHAPE, SCALE_FACTOR = "image", "im_shape", "scale_factor"


@dataclass(frozen=True)
class DetectionItem:
    """One decoded image: resized uint8 HWC, ``im_shape`` [h, w] and ``scale_factor`` [sy, sx] (float32)."""

    image: np.ndarray
    im_shape: np.ndarray
    scale_factor: np.ndarray


def detection_outputs(signature: Signature, model: str = "") -> tuple[TensorSpec, TensorSpec]:
    """The ``bbox`` [M, 6] and ``bbox_num`` [N] outputs, by shape: exports name them after internal
    variables (``multiclass_nms3_0.tmp_0``, or ``fetch_name_0`` in PIR programs)."""
    boxes = [o for o in signature.outputs if len(o.shape) == 2 and o.shape[1] == 6 and o.dtype.startswith("float")]
    counts = [o for o in signature.outputs if len(o.shape) == 1 and o.dtype.startswith("int")]
    if not boxes or not counts:
        found = [(o.name, o.dtype, list(o.shape)) for o in signature.outputs]
        raise ModelLoadError(
            f"model {model!r}: kind detection needs PaddleDetection's outputs bbox [N, 6] (float) and bbox_num [N] "
            f"(int); the program has {found}. Serve it as kind: tensor"
        )
    return boxes[0], counts[0]


def split_boxes(bbox: np.ndarray, counts: np.ndarray, images: int) -> list[np.ndarray]:
    """``bbox`` rows per image, by ``bbox_num``; an error when they do not add up."""
    counts = counts.astype(np.int64).reshape(-1)
    if len(counts) != images or counts.sum() != len(bbox) or (counts < 0).any():
        raise PdserveError(
            f"the detector returned bbox_num {counts.tolist()} for {images} images and {len(bbox)} boxes"
        )
    return list(np.split(bbox, np.cumsum(counts)[:-1]))


class DetectionWorker:
    """``KindWorker`` of the detection kind."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.det = spec.config.detection
        self.normalize = DetectionNormalizer(self.det)
        self.size = self.det.padded_size

    def setup(self) -> Ready:
        import paddle

        spec = self.spec
        plan = plan_predictor(spec.config, spec.version_dir, paddle.device.is_compiled_with_cuda(), spec.model)
        self.signature = read_signature(plan.model_file)
        names = [s.name for s in self.signature.inputs]
        if IMAGE not in names or not set(names) <= {IMAGE, IM_SHAPE, SCALE_FACTOR}:
            raise ModelLoadError(
                f"model {spec.model!r}: kind detection feeds {[IMAGE, IM_SHAPE, SCALE_FACTOR]}; the program takes "
                f"{names}. Serve it as kind: tensor"
            )
        image = next(s for s in self.signature.inputs if s.name == IMAGE)
        fixed = tuple(image.shape[2:])
        if len(fixed) == 2 and -1 not in fixed and fixed != self.size:
            raise ModelLoadError(
                f"model {spec.model!r}: the program takes {IMAGE} {list(image.shape)}, but detection preprocessing "
                f"pads images to {list(self.size)}: set detection.target_size (and keep_ratio) to match"
            )
        self.bbox, self.bbox_num = detection_outputs(self.signature, spec.model)
        self.predictor = build_predictor(plan)
        self.inputs = {name: self.predictor.get_input_handle(name) for name in names}
        start = time.perf_counter()
        blank = DetectionItem(
            np.zeros((*self.size, 3), np.uint8), np.array(self.size, np.float32), np.ones(2, np.float32)
        )
        self.run([blank])  # builds oneDNN's primitives now, and proves the outputs split
        return Ready((), time.perf_counter() - start, self.signature)

    def attach(self, message: Any) -> None: ...

    def run(self, payload: list[DetectionItem]) -> tuple[list[np.ndarray], float]:
        start = time.perf_counter()
        feeds = {
            IMAGE: self.normalize.batch([item.image for item in payload], self.size),
            IM_SHAPE: np.stack([item.im_shape for item in payload]),
            SCALE_FACTOR: np.stack([item.scale_factor for item in payload]),
        }
        for name, handle in self.inputs.items():
            handle.reshape(list(feeds[name].shape))
            handle.copy_from_cpu(feeds[name])
        self.predictor.run()
        bbox = self.predictor.get_output_handle(self.bbox.name).copy_to_cpu()
        counts = self.predictor.get_output_handle(self.bbox_num.name).copy_to_cpu()
        return split_boxes(bbox.reshape(-1, 6), counts, len(payload)), time.perf_counter() - start

    def close(self) -> None: ...
