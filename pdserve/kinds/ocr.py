"""``kind: ocr``: PaddleOCR's text pipeline (detection, direction, recognition) over three models of
the repository, each with its own batcher and workers.

A request's images are decoded in the decode threads; the pipeline then runs each image in the
HTTP process (pixel work in threads, ``ocr_geometry.py``) and sends each model's work to that
model's batcher: detection inputs padded to a shape bucket (``ocr.det_bucket``), every text line
to the direction classifier at one shape, and every line to the recogniser padded to a width
bucket (``ocr.rec_widths``). Lines of all concurrent requests therefore batch together by bucket,
and one request's recognition overlaps the next one's detection. ``ocr.rec_padding: paddleocr`` pads
lines as PaddleOCR does instead, for PaddleOCR's own text: lines then batch only with lines of the
same padded width, mostly their own image's. The stage models are tensor models:
the OCR repository (``pipeline/published.py``) declares their bucket shapes as ``tensor.warm_shapes``,
so their workers build them before the first request and run stacks only at warmed batch sizes.
One image's failure fails only that image's request.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter

from pdserve.errors import BadRequest, ModelConfigError
from pdserve.kinds import ocr_geometry as geo
from pdserve.kinds.base import (
    BYTES,
    DecodeContext,
    ModelKind,
    NamedTensor,
    Stage,
    Version,
    WantedOutput,
    Work,
    decoded_images,
)
from pdserve.metrics import Metrics
from pdserve.model_config import ModelConfig, Ocr
from pdserve.preprocess import decode_image
from pdserve.runtime.signature import TensorSpec

IMAGE_INPUT = "image"
LINES_OUTPUT = "lines"


def _decode_bgr(data: bytes, max_pixels: int) -> np.ndarray:
    rgb = decode_image(data, max_pixels)
    return np.ascontiguousarray(rgb[:, :, ::-1])  # PaddleOCR's models were trained on OpenCV's BGR


def read_characters(path: Path, use_space_char: bool) -> list[str]:
    """The recogniser's classes: CTC's blank, the dictionary's characters, and a space if it has one."""
    if not path.is_file():
        raise ModelConfigError(f"OCR dictionary {path} not found")
    chars = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return ["", *chars, *([" "] if use_space_char else [])]


class OcrPipeline:
    """One model version's pipeline: its settings and dictionary, and how a batch of images runs."""

    def __init__(self, settings: Ocr, characters: list[str], padded: Counter, pixels: Counter) -> None:
        self.s = settings
        self.characters = characters
        self.padded, self.pixels = padded, pixels  # recognition inputs: waste = padded / pixels

    async def run(self, images: Sequence[np.ndarray], stages: Mapping[str, Stage]) -> list[Any]:
        results = await asyncio.gather(*(self.one(img, stages) for img in images), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled: the batch goes, not one image
        return list(results)

    async def one(self, image: np.ndarray, stages: Mapping[str, Stage]) -> dict[str, Any]:
        s = self.s
        height, width = image.shape[:2]
        size = geo.det_size(height, width, s.det_limit_side_len, s.det_limit_type)
        padded = (math.ceil(size[0] / s.det_bucket) * s.det_bucket, math.ceil(size[1] / s.det_bucket) * s.det_bucket)
        det_in = await asyncio.to_thread(geo.det_input, image, size, padded, s.det_mean, s.det_std)
        prob = (await stages["det"](det_in))[0, 0, : size[0], : size[1]]
        boxes = await asyncio.to_thread(self._boxes, prob, (height, width))
        if not boxes:
            return {"lines": [], "width": width, "height": height}
        crops = await asyncio.to_thread(lambda: [geo.crop_line(image, b) for b in boxes])
        angles = [0] * len(crops)
        if "cls" in stages:
            crops, angles = await self._turn(crops, stages["cls"])
        if s.rec_padding == "paddleocr":
            widths = geo.paddleocr_widths(crops, s.rec_image_height, s.rec_image_width, s.rec_batch_num)
        else:
            widths = [self.bucket(crop) for crop in crops]
        reads = (self._recognise(crop, width, stages["rec"]) for crop, width in zip(crops, widths, strict=True))
        recognised = await asyncio.gather(*reads)
        lines = [
            {"text": text, "score": score, "box": [[int(x), int(y)] for x, y in box], "angle": angle}
            for box, angle, (text, score) in zip(boxes, angles, recognised, strict=True)
            if score >= s.drop_score
        ]
        return {"lines": lines, "width": width, "height": height}

    def _boxes(self, prob: np.ndarray, original: tuple[int, int]) -> list[np.ndarray]:
        s = self.s
        found = geo.db_boxes(
            prob, original, s.det_db_thresh, s.det_db_box_thresh, s.det_db_unclip_ratio, s.det_max_candidates,
            s.det_use_dilation,
        )  # fmt: skip
        return geo.reading_order(geo.clean_boxes(found, original))

    async def _turn(self, crops: list[np.ndarray], cls: Stage) -> tuple[list[np.ndarray], list[int]]:
        """Lines the classifier reads as upside down (class 1, '180') with enough confidence, turned;
        and each line's angle, 0 or 180."""
        inputs = [geo.cls_input(c, self.s.cls_image_shape) for c in crops]
        probs = await asyncio.gather(*(cls(x[None]) for x in inputs))
        turned, angles = [], []
        for crop, p in zip(crops, probs, strict=True):
            upside_down = int(p[0].argmax()) == 1 and float(p[0].max()) > self.s.cls_thresh
            turned.append(np.ascontiguousarray(np.rot90(crop, 2)) if upside_down else crop)
            angles.append(180 if upside_down else 0)
        return turned, angles

    def bucket(self, crop: np.ndarray) -> int:
        width = geo.rec_width(crop, self.s.rec_image_height)
        return next((b for b in self.s.rec_widths if b >= width), self.s.rec_widths[-1])

    async def _recognise(self, crop: np.ndarray, width: int, rec: Stage) -> tuple[str, float]:
        """The line at the recogniser's height, padded (or squeezed) to ``width``, read."""
        x = geo.rec_input(crop, self.s.rec_image_height, width)
        used = min(width, geo.rec_width(crop, self.s.rec_image_height))
        self.padded.inc((width - used) * self.s.rec_image_height)
        self.pixels.inc(width * self.s.rec_image_height)
        probs = await rec(x[None])
        return geo.ctc_decode(probs[0], self.characters)


class OcrKind(ModelKind):
    name = "ocr"

    @staticmethod
    def _settings(config: ModelConfig) -> Ocr:
        return config.ocr or Ocr()

    def settings(self, config: ModelConfig) -> dict[str, Any]:
        return self._settings(config).model_dump()

    def stages(self, config: ModelConfig) -> dict[str, str]:
        s = self._settings(config)
        return {"det": s.det_model, "rec": s.rec_model, **({"cls": s.cls_model} if s.cls_model else {})}

    def pipeline(self, version: Version, metrics: Metrics) -> OcrPipeline:
        s = self._settings(version.config)
        characters = read_characters(version.path / s.dictionary, s.use_space_char)
        pixels = metrics.padded_pixels
        return OcrPipeline(s, characters, pixels.labels(version.name, "padding"), pixels.labels(version.name, "all"))

    # ---- metadata ------------------------------------------------------------------------------
    def inputs(self, version: Version) -> list[TensorSpec]:
        return [TensorSpec(IMAGE_INPUT, BYTES, (-1,))]

    def outputs(self, version: Version) -> list[TensorSpec]:
        return [TensorSpec(LINES_OUTPUT, BYTES, (-1,))]

    # ---- decode ----------------------------------------------------------------------------------
    def from_images(self, version: Version, images: list[bytes], ctx: DecodeContext) -> Work:
        return decoded_images(images, partial(_decode_bgr, max_pixels=ctx.max_image_pixels), ctx)

    def from_tensors(self, version: Version, tensors: Sequence[NamedTensor], ctx: DecodeContext) -> Work:
        if len(tensors) != 1 or tensors[0].name != IMAGE_INPUT or tensors[0].elements is None:
            raise BadRequest(f"model {version.name!r} takes one input, {IMAGE_INPUT!r}: BYTES, encoded images")
        return self.from_images(version, tensors[0].elements, ctx)

    # ---- encode ----------------------------------------------------------------------------------
    def to_json(self, version: Version, outputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        """Per image: its lines in reading order (text, score, box: 4 corners clockwise from top-left in
        the image's pixels, angle), and its size. ``params["score_threshold"]`` drops weaker lines."""
        least = params.get("score_threshold")
        if least is None:
            return list(outputs)
        return [{**o, "lines": [line for line in o["lines"] if line["score"] >= least]} for o in outputs]

    def to_tensors(
        self, version: Version, outputs: list[Any], wanted: Sequence[WantedOutput]
    ) -> list[tuple[str, np.ndarray]]:
        for want in wanted:
            if want.name != LINES_OUTPUT or want.classification is not None:
                raise BadRequest(f"model {version.name!r} has one output, {LINES_OUTPUT!r} (JSON per image)")
        lines = np.empty((len(outputs),), dtype=object)
        for i, result in enumerate(outputs):
            lines[i] = json.dumps(result["lines"], ensure_ascii=False).encode()
        return [(LINES_OUTPUT, lines)]
