"""Batches and outputs between the HTTP process and a worker, through shared memory.

The parent creates and unlinks every segment; a worker only attaches. Only small tuples cross the
pipe (see ``worker.py`` for the protocol). Segments belong to one worker process and go with it:
a restarted worker gets new ones, so nothing a dead worker half-wrote is ever read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from multiprocessing.shared_memory import SharedMemory

import numpy as np


def attach(name: str) -> SharedMemory:
    # The parent created and will unlink the segment; spawn shares its resource tracker with us.
    return SharedMemory(name=name)


def array_on(shm: SharedMemory, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    return np.ndarray(shape, dtype, buffer=shm.buf)


def crop_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """An image crop as the HTTP process makes it, uint8 HWC, for a model input of CHW."""
    channels, height, width = input_shape
    return (height, width, channels)


# What each row of a batch holds, one letter per row in the "run" message: a uint8 HWC crop that
# the worker normalises ("u", images), or a float32 CHW input sent as it is ("f", KServe tensors).
CROP, TENSOR = "u", "f"


class BatchBuffers:
    """One worker's input segments (created now) and output segment (created once its shape is known).

    Two input segments: uint8 crops (a quarter of the bytes of float32; the worker normalises them a
    whole batch at a time) and float32 rows for inputs that arrive already preprocessed."""

    def __init__(self, max_batch: int, input_shape: tuple[int, ...]) -> None:
        self.max_batch = max_batch
        self.input_shape = input_shape
        self.input_shm = SharedMemory(create=True, size=max_batch * math.prod(input_shape) * 4)
        self.crop_shm = SharedMemory(create=True, size=max_batch * math.prod(input_shape))
        self._inputs: np.ndarray | None = array_on(self.input_shm, (max_batch, *input_shape))
        self._crops: np.ndarray | None = array_on(self.crop_shm, (max_batch, *crop_shape(input_shape)), np.uint8)
        self._closed = False
        self.output_shm: SharedMemory | None = None
        self._outputs: np.ndarray | None = None

    def attach_output(self, out_shape: tuple[int, ...]) -> str:
        """Create the output segment for per-image outputs of ``out_shape``; returns its name."""
        if self.output_shm is None:
            self.output_shm = SharedMemory(create=True, size=max(1, self.max_batch * math.prod(out_shape) * 4))
            self._outputs = array_on(self.output_shm, (self.max_batch, *out_shape))
        return self.output_shm.name

    def write(self, batch: Sequence[np.ndarray]) -> str:
        """Copy ``batch`` into the input segments; returns the row kinds (``CROP`` or ``TENSOR`` each)."""
        assert self._inputs is not None, "buffers are closed"
        assert self._crops is not None, "buffers are closed"
        kinds = []
        for i, row in enumerate(batch):
            if row.dtype == np.uint8:
                self._crops[i] = row
                kinds.append(CROP)
            else:
                self._inputs[i] = row
                kinds.append(TENSOR)
        return "".join(kinds)

    def read(self, n: int) -> list[np.ndarray]:
        assert self._outputs is not None, "no output segment"
        return list(self._outputs[:n].copy())

    def close(self) -> None:
        """Free every segment; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._inputs = self._crops = self._outputs = None  # drop the views so the segments can close
        for shm in (self.input_shm, self.crop_shm, self.output_shm):
            if shm is not None:
                shm.close()
                shm.unlink()
        self.output_shm = None
