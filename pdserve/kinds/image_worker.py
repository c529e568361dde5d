"""The image classifier in its worker process, and the shared memory its batches cross.

Batches are fixed-shape: images arrive as uint8 crops (a quarter of float32's bytes) that the
worker normalises a whole batch at a time, or as float32 rows sent as they are (v2 tensors), padded
to a size the worker warmed up (oneDNN builds primitives per input shape). Outputs come back
through a segment made once the output shape is known. Only small tuples cross the pipe.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.errors import PdserveError
from pdserve.model_config import ModelConfig
from pdserve.preprocess import Normalizer
from pdserve.runtime.contract import Ready, WorkerSpec
from pdserve.runtime.predictor_config import LoadedPredictor, find_model_files
from pdserve.runtime.transport import CROP, BatchBuffers, array_on, attach, crop_shape
from pdserve.runtime.validation import ValidationResult, ValidationSet, compare, cpu_isa


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def warm_up(runner: LoadedPredictor, batch: np.ndarray, sizes: tuple[int, ...]) -> tuple[tuple[int, ...], float]:
    """Run every padded size now, not on the first request; the output shape and the slowest second run."""
    out_shape: tuple[int, ...] = ()
    slowest = 0.0
    for size in sizes:
        zeros = batch[:size]  # still all zeros
        runner.run(zeros)  # the first run of a shape builds oneDNN primitives; time the second
        start = time.perf_counter()
        out = runner.run(zeros)
        slowest = max(slowest, time.perf_counter() - start)
        if out.shape[0] != size:
            raise ValueError(f"output batch dimension {out.shape[0]} != input batch {size}")
        out_shape = tuple(out.shape[1:])
    return out_shape, slowest


def fallback_dir(model: str, version_dir: Path, config: ModelConfig) -> Path:
    """The FP32 twin's version folder: ``quantization.fallback`` or the model it was quantized from."""
    named = config.quantization.fallback or (config.calibration or {}).get("from_model")
    if not named:
        raise PdserveError(f"model {model!r}: quantization.on_failure is fallback, but no fallback model is named")
    path = version_dir.parent.parent / named
    if find_model_files(path) is None:
        raise PdserveError(f"model {model!r}: fallback {named!r} has no .pdmodel program at {path}")
    return path


class ImageWorker:
    """``KindWorker`` of the image kind: load, warm up, check INT8 against FP32, run batches."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.sizes = spec.config.padded_batch_sizes
        self.input_shape = tuple(spec.config.input.shape)
        self.normalize = Normalizer(spec.config.preprocessing)
        self.out_shm: SharedMemory | None = None
        self.outputs: np.ndarray | None = None

    def setup(self) -> Ready:
        spec = self.spec
        self.runner = LoadedPredictor(spec.config, spec.version_dir, spec.model)
        self.in_shm, self.crop_shm = (attach(name) for name in spec.shared)
        largest = max(self.sizes)
        self.inputs = array_on(self.in_shm, (largest, *self.input_shape))
        self.crops = array_on(self.crop_shm, (largest, *crop_shape(self.input_shape)), np.uint8)
        self.batch = np.zeros((largest, *self.input_shape), np.float32)  # what the predictor reads
        self.out_shape, slowest = warm_up(self.runner, self.batch, self.sizes)
        validation = self._validate()
        if validation is not None and validation.action == "fallback":
            self.out_shape, slowest = warm_up(self.runner, self.batch, self.sizes)
        return Ready(self.out_shape, slowest, None, validation.as_dict() if validation else None)

    def _validate(self) -> ValidationResult | None:
        """Run an INT8 version's validation set here; on fallback, serve its FP32 twin from now on."""
        spec = self.spec
        policy = spec.config.quantization
        # Untrained weights (random_weights: exported for tests) give near-uniform outputs whose top-1
        # flips at any rounding: there is no accuracy to guard.
        if spec.config.precision != "int8" or not policy.check or spec.config.random_weights:
            return None
        vset = ValidationSet.load(spec.version_dir)
        if vset is None:
            return None
        start = time.perf_counter()
        outputs = []
        largest = max(self.sizes)
        for first in range(0, len(vset.crops), largest):
            crops = vset.crops[first : first + largest]
            size = next(s for s in self.sizes if s >= len(crops))  # warmed shapes only: oneDNN caches per shape
            self.batch[:size] = 0
            self.normalize(crops, out=self.batch[: len(crops)])
            outputs.append(self.runner.run(self.batch[:size])[: len(crops)])
        probs = np.concatenate(outputs)
        reference = vset.reference
        if not spec.config.output.softmax_applied:
            probs, reference = softmax(probs), softmax(reference)
        agreement, drop = compare(reference, probs)
        passed = 1 - agreement <= policy.max_disagreement + 1e-9
        action = "serve" if passed else policy.on_failure
        result = ValidationResult(
            len(probs), agreement, drop, policy.max_disagreement, cpu_isa(), time.perf_counter() - start, passed, action
        )
        if action == "refuse":
            raise PdserveError(f"model {spec.model!r}: {result.describe()}: refused (quantization.on_failure: refuse)")
        if action == "fallback":
            twin = fallback_dir(spec.model, spec.version_dir, spec.config)
            fp32 = spec.config.model_copy(update={"precision": "fp32"})
            self.runner = LoadedPredictor(fp32, twin, spec.model)
        return result

    def attach(self, message: Any) -> None:
        self.out_shm = attach(message)
        self.outputs = array_on(self.out_shm, (max(self.sizes), *self.out_shape))

    def run(self, payload: Any) -> tuple[Any, float]:
        size, kinds = payload
        assert self.outputs is not None, "run before the output segment was attached"
        start = time.perf_counter()
        n = len(kinds)
        if kinds == CROP * n:  # the usual case: images, normalised all at once
            self.normalize(self.crops[:n], out=self.batch[:n])
        else:
            for i, kind in enumerate(kinds):
                if kind == CROP:
                    self.normalize(self.crops[i], out=self.batch[i])
                else:
                    self.batch[i] = self.inputs[i]
        self.batch[n:size] = 0  # padding rows keep the shapes oneDNN has seen to the warmed-up set
        self.outputs[:size] = self.runner.run(self.batch[:size])
        return None, time.perf_counter() - start

    def close(self) -> None:
        self.inputs = self.crops = self.outputs = None  # type: ignore[assignment]
        for shm in (getattr(self, "in_shm", None), getattr(self, "crop_shm", None), self.out_shm):
            if shm is not None:
                shm.close()


class ImageTransport:
    """``Transport`` of the image kind: ``BatchBuffers`` in the parent."""

    def __init__(self, config: ModelConfig) -> None:
        self.buffers = BatchBuffers(max(config.padded_batch_sizes), tuple(config.input.shape))
        self.shared: tuple[str, ...] = (self.buffers.input_shm.name, self.buffers.crop_shm.name)

    def encode(self, payload: tuple[Sequence[np.ndarray], int]) -> tuple[int, str]:
        rows, size = payload
        return size, self.buffers.write(rows)

    def decode(self, result: Any, payload: tuple[Sequence[np.ndarray], int]) -> list[np.ndarray]:
        return self.buffers.read(len(payload[0]))

    def after_ready(self, ready: Ready) -> str:
        return self.buffers.attach_output(ready.output_shape)

    def close(self) -> None:
        self.buffers.close()
