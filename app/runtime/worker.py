"""The worker process: one Paddle predictor, fed through shared memory.

``predictor.run()`` holds the GIL (measured: another thread in the same process runs at 1-6% speed
meanwhile), so every predictor lives in its own process and the HTTP process never calls it.
Only small tuples cross the pipe; images and outputs go through shared memory the parent owns.

Protocol, parent -> worker: ``("output", shm_name)``, ``("run", batch_id, (size, kinds))``, ``("stop",)``:
the batch's rows are described by ``kinds`` (one letter each, see ``transport.py``) and padded to
``size`` rows, a size the worker warmed up.
Worker -> parent: ``("ready", out_shape, pid, slowest_warmup_s)``, ``("load_failed", message)``,
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

from app.errors import PdserveError
from app.model_config import ModelConfig
from app.preprocess import Normalizer
from app.runtime.predictor_config import LoadedPredictor
from app.runtime.transport import CROP, array_on, attach, crop_shape


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
        out_shape: tuple[int, ...] = ()
        slowest = 0.0
        for size in spec.batch_sizes:  # warm every padded size now, not on the first request
            zeros = batch[:size]  # still all zeros
            runner.run(zeros)  # the first run of a shape builds oneDNN primitives; time the second
            start = time.perf_counter()
            out = runner.run(zeros)
            slowest = max(slowest, time.perf_counter() - start)
            if out.shape[0] != size:
                raise ValueError(f"output batch dimension {out.shape[0]} != input batch {size}")
            out_shape = tuple(out.shape[1:])
    except Exception as exc:
        message = str(exc) if isinstance(exc, PdserveError) else f"model {spec.model!r}: {type(exc).__name__}: {exc}"
        conn.send(("load_failed", message))
        conn.close()
        return
    conn.send(("ready", out_shape, os.getpid(), slowest))
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
