"""The worker process: one Paddle predictor, fed through shared memory.

``predictor.run()`` holds the GIL (measured: another thread in the same process runs at 1-6% speed
meanwhile), so every predictor lives in its own process and the HTTP process never calls it.
Only small tuples cross the pipe; images and outputs go through shared memory the parent owns.

Protocol, parent -> worker: ``("output", shm_name)``, ``("run", batch_id, (size, kinds))``, ``("stop",)``:
the batch's rows are described by ``kinds`` (one letter each, see ``transport.py``) and padded to
``size`` rows, a size the worker warmed up.
Worker -> parent: ``("ready", out_shape, pid, slowest_warmup_s, None, validation)`` (validation: an
INT8 version's check against FP32, see ``validation.py``, or None), ``("load_failed", message)``,
``("done", batch_id, compute_s)``, ``("failed", batch_id, message)``.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.errors import PdserveError
from pdserve.model_config import ModelConfig
from pdserve.preprocess import Normalizer
from pdserve.runtime.predictor_config import LoadedPredictor, find_model_files
from pdserve.runtime.transport import CROP, array_on, attach, crop_shape
from pdserve.runtime.validation import ValidationResult, ValidationSet, compare, cpu_isa


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, pickled once at spawn."""

    model: str
    version_dir: Path
    config: ModelConfig
    input_shm: str
    crop_shm: str = ""
    nice: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.config.input.shape)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return self.config.padded_batch_sizes


def _ignore_group_signals() -> None:
    # The parent drains, then stops us with a message; a Ctrl-C or SIGTERM sent to the whole process
    # group must not kill in-flight work. Set after importing paddle, whose import installs handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _warm_up(runner: LoadedPredictor, batch: np.ndarray, sizes: tuple[int, ...]) -> tuple[tuple[int, ...], float]:
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


def _validate(
    spec: WorkerSpec, runner: LoadedPredictor, normalize: Normalizer, batch: np.ndarray
) -> tuple[LoadedPredictor, ValidationResult | None]:
    """Run an INT8 version's validation set here; the predictor to serve (its FP32 twin on fallback)."""
    policy = spec.config.quantization
    # Untrained weights (random_weights: exported for tests) give near-uniform outputs whose top-1
    # flips at any rounding: there is no accuracy to guard.
    if spec.config.precision != "int8" or not policy.check or spec.config.random_weights:
        return runner, None
    vset = ValidationSet.load(spec.version_dir)
    if vset is None:
        return runner, None
    start = time.perf_counter()
    largest = max(spec.batch_sizes)
    outputs = []
    for first in range(0, len(vset.crops), largest):
        crops = vset.crops[first : first + largest]
        size = next(s for s in spec.batch_sizes if s >= len(crops))  # warmed shapes only: oneDNN caches per shape
        batch[:size] = 0
        normalize(crops, out=batch[: len(crops)])
        outputs.append(runner.run(batch[:size])[: len(crops)])
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
    if passed:
        return runner, result
    if action == "refuse":
        raise PdserveError(f"model {spec.model!r}: {result.describe()}: refused (quantization.on_failure: refuse)")
    twin = fallback_dir(spec)
    fp32 = spec.config.model_copy(update={"precision": "fp32"})
    return LoadedPredictor(fp32, twin, spec.model), result


def fallback_dir(spec: WorkerSpec) -> Path:
    """The FP32 twin's version folder: ``quantization.fallback`` or the model it was quantized from."""
    named = spec.config.quantization.fallback or (spec.config.calibration or {}).get("from_model")
    if not named:
        raise PdserveError(f"model {spec.model!r}: quantization.on_failure is fallback, but no fallback model is named")
    path = spec.version_dir.parent.parent / named
    if find_model_files(path) is None:
        raise PdserveError(f"model {spec.model!r}: fallback {named!r} has no .pdmodel program at {path}")
    return path


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    # Below the HTTP process in CPU priority: under overload its event loop (admission, 429s,
    # health probes) and decoding threads must not wait behind inference (BENCHMARKS.md, overload).
    os.nice(spec.nice)
    warnings.filterwarnings("ignore", message="No ccache found")
    _ignore_group_signals()
    try:
        runner = LoadedPredictor(spec.config, spec.version_dir, spec.model)
        _ignore_group_signals()
        in_shm, crop_shm = attach(spec.input_shm), attach(spec.crop_shm)
        largest = max(spec.batch_sizes)
        inputs = array_on(in_shm, (largest, *spec.input_shape))
        crops = array_on(crop_shm, (largest, *crop_shape(spec.input_shape)), np.uint8)
        batch = np.zeros((largest, *spec.input_shape), np.float32)  # what the predictor reads
        normalize = Normalizer(spec.config.preprocessing)
        out_shape, slowest = _warm_up(runner, batch, spec.batch_sizes)
        runner, validation = _validate(spec, runner, normalize, batch)
        if validation is not None and validation.action == "fallback":
            out_shape, slowest = _warm_up(runner, batch, spec.batch_sizes)
    except Exception as exc:
        message = str(exc) if isinstance(exc, PdserveError) else f"model {spec.model!r}: {type(exc).__name__}: {exc}"
        conn.send(("load_failed", message))
        conn.close()
        return
    conn.send(("ready", out_shape, os.getpid(), slowest, None, validation.as_dict() if validation else None))
    out_shm: SharedMemory | None = None
    outputs: np.ndarray | None = None
    while True:
        try:
            msg: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):  # parent gone
            break
        kind = msg[0]
        if kind == "stop":
            break
        if kind == "output":
            out_shm = attach(msg[1])
            outputs = array_on(out_shm, (max(spec.batch_sizes), *out_shape))
            continue
        _, batch_id, (size, kinds) = msg
        try:
            assert outputs is not None, "run before output buffer attached"
            start = time.perf_counter()
            n = len(kinds)
            if kinds == CROP * n:  # the usual case: images, normalised all at once
                normalize(crops[:n], out=batch[:n])
            else:
                for i, kind in enumerate(kinds):
                    if kind == CROP:
                        normalize(crops[i], out=batch[i])
                    else:
                        batch[i] = inputs[i]
            batch[n:size] = 0  # padding rows keep the shapes oneDNN has seen to the warmed-up set
            result = runner.run(batch[:size])
            compute = time.perf_counter() - start
            outputs[:size] = result
            conn.send(("done", batch_id, compute))
        except Exception as exc:
            traceback.print_exc()
            conn.send(("failed", batch_id, f"{type(exc).__name__}: {exc}"))
    del inputs, crops, outputs
    in_shm.close()
    crop_shm.close()
    if out_shm is not None:
        out_shm.close()
