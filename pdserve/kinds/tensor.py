"""``kind: tensor``: any Paddle inference model, fed named tensors over v2; its inputs and outputs
are read from the program itself (``runtime/signature.py``).

These models have shapes only requests know, so tensors cross the pipe pickled (no fixed-size shared
memory). Concurrent requests are stacked along the first dimension when the signature and shapes
allow it and the outputs come back one row per input row; otherwise (e.g. a detector returning all
images' boxes in one list) they run one after the other. A model whose config declares
``tensor.warm_shapes`` (e.g. a recogniser's width buckets) runs those shapes at every batch size
before it is ready, and its stacks run only at those batch sizes (``runs``), so oneDNN sees a few
shapes, all built before the first request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pdserve.errors import BadRequest, InputRejected, PdserveError
from pdserve.kinds.base import DecodeContext, ModelKind, NamedTensor, Version, WantedOutput, Work, ready_items
from pdserve.model_config import ModelConfig
from pdserve.runtime.contract import InputRefused, Ready, WorkerSpec
from pdserve.runtime.pool import WorkerPool
from pdserve.runtime.predictor_config import build_predictor, plan_predictor
from pdserve.runtime.signature import Signature, TensorSpec, input_error, read_signature

Feeds = dict[str, np.ndarray]


class TensorWorker:
    """``KindWorker`` of the tensor kind: named arrays in, every output out."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec

    def setup(self) -> Ready:
        spec = self.spec
        if spec.config.engine == "onnxruntime":
            raise PdserveError(
                f"model {spec.model!r}: kind tensor runs on Paddle (engine onednn or openvino); engine onnxruntime "
                "serves kind image models"
            )
        import paddle

        plan = plan_predictor(spec.config, spec.version_dir, paddle.device.is_compiled_with_cuda(), spec.model)
        self.signature = read_signature(plan.model_file)
        self.predictor = build_predictor(plan)
        self.inputs = {s.name: self.predictor.get_input_handle(s.name) for s in self.signature.inputs}
        self.outputs = {s.name: self.predictor.get_output_handle(s.name) for s in self.signature.outputs}
        return Ready(signature=self.signature, slowest_warmup_s=self._warm_up())

    def _warm_up(self) -> float:
        """Run every declared shape at every batch size, largest first (memory grows once), twice: the
        first run of a shape builds oneDNN's primitives. The slowest second run, in seconds."""
        config, model = self.spec.config, self.spec.model
        specs = {s.name: s for s in self.signature.inputs}
        batches = []
        for shapes in config.tensor.warm_shapes:
            if set(shapes) != set(specs):
                raise PdserveError(
                    f"model {model!r}: tensor.warm_shapes entry {dict(shapes)} must name every input of the model, "
                    f"{sorted(specs)}"
                )
            for size in config.padded_batch_sizes:
                batches.append({name: np.zeros((size, *shape), specs[name].dtype) for name, shape in shapes.items()})
        batches.sort(key=lambda feeds: -sum(a.size for a in feeds.values()))
        slowest = 0.0
        for feeds in batches:
            try:
                self.run(feeds)
                slowest = max(slowest, self.run(feeds)[1])
            except InputRefused as exc:
                taken = {name: list(a.shape) for name, a in feeds.items()}
                raise PdserveError(
                    f"model {model!r}: tensor.warm_shapes: the model cannot take {taken}: {exc}"
                ) from exc
        return slowest

    def attach(self, message: Any) -> None: ...

    def run(self, payload: Feeds) -> tuple[Feeds, float]:
        start = time.perf_counter()
        try:
            for name, array in payload.items():
                self.inputs[name].reshape(list(array.shape))
                self.inputs[name].copy_from_cpu(np.ascontiguousarray(array))
            self.predictor.run()
        except Exception as exc:
            refused = input_error(exc, payload)
            if refused is not None:
                raise InputRefused(refused) from exc
            raise
        result = {name: handle.copy_to_cpu() for name, handle in self.outputs.items()}
        return result, time.perf_counter() - start

    def close(self) -> None: ...


class PipeTransport:
    """``Transport`` of the tensor kind: the arrays go through the pipe as they are."""

    shared: tuple[str, ...] = ()

    def encode(self, payload: Feeds) -> Feeds:
        return payload

    def decode(self, result: Feeds, payload: Feeds) -> Feeds:
        return result

    def after_ready(self, ready: Ready) -> None:
        return None

    def close(self) -> None: ...


def runs(rows: int, sizes: tuple[int, ...], split: bool) -> list[tuple[int, int]]:
    """How a stack of ``rows`` runs at the warmed batch ``sizes``: (rows taken, rows run) per run. Split:
    the largest size that fits, again and again (no padded rows; a CPU spends as much on a padded row as
    on a real one); otherwise pieces of the largest size and the rest padded up to the next size."""
    plan = []
    while rows > 0:
        fits = [s for s in sizes if s <= rows]
        if split and fits:
            take = size = max(fits)
        else:
            take = min(rows, sizes[-1])
            size = next(s for s in sizes if s >= take)
        plan.append((take, size))
        rows -= take
    return plan


def _padded(array: np.ndarray, rows: int) -> np.ndarray:
    if len(array) == rows:
        return array
    return np.concatenate([array, np.zeros((rows - len(array), *array.shape[1:]), array.dtype)])


def _shape_key(request: Feeds) -> tuple[object, ...]:
    """Requests with equal keys stack along the first dimension."""
    return tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(request.items()))


class TensorBatching:
    """Requests of the same shapes (beyond the first dimension) are stacked into one run when the
    model allows it, each group of shapes on its own; others run one after the other, all on one
    instance. A request the model refuses (``InputRejected``) fails alone: a refused stack is run
    again one request at a time to find which. With ``tensor.warm_shapes``, every stack (one request
    alone too) runs at the warmed batch sizes (``runs``)."""

    def __init__(self, config: ModelConfig) -> None:
        self.batchable: bool | None = None  # from the signature, then False once outputs did not split
        self.sizes = config.padded_batch_sizes if config.tensor.warm_shapes else ()
        self.split = config.gpu_id is None and not config.devices  # a GPU pads instead: padded rows are ~free

    async def run(self, pool: WorkerPool, requests: Sequence[Feeds]) -> list[Feeds | Exception]:
        if self.batchable is None:
            self.batchable = pool.signature.batchable if pool.signature is not None else False
        inst = await pool.acquire()
        groups: dict[tuple[object, ...], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(_shape_key(request) if self.batchable else (index,), []).append(index)
        results: list[Feeds | Exception | None] = [None] * len(requests)
        # The instance is READY again after each run and nothing else takes it meanwhile: reuse it.
        for members in groups.values():
            stack = len(members) > 1 or (self.batchable and bool(self.sizes))
            stacked = await self._stacked(pool, inst, [requests[i] for i in members]) if stack else None
            for position, index in enumerate(members):
                if stacked is not None:
                    results[index] = stacked[position]
                    continue
                try:
                    results[index] = await pool.run_on(inst, requests[index], 1, 1)
                except InputRejected as exc:
                    results[index] = exc
        return [r if r is not None else RuntimeError("no result") for r in results]

    async def _stacked(self, pool: WorkerPool, inst: Any, requests: list[Feeds]) -> list[Feeds] | None:
        """The stacked requests run (in pieces of the warmed sizes, if any) and split back; None when the
        model refused the stack or its outputs do not come back one row per input row."""
        rows = [len(next(iter(r.values()))) for r in requests]
        feeds = {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}
        total = sum(rows)
        if not total:
            return None  # nothing to stack: empty requests run as they are
        parts: list[Feeds] = []
        start = 0
        for take, size in runs(total, self.sizes, self.split) if self.sizes else [(total, total)]:
            piece = {name: _padded(array[start : start + take], size) for name, array in feeds.items()}
            try:
                outputs: Feeds = await pool.run_on(inst, piece, take, size)
            except InputRejected:
                return None
            if not all(len(o) == size for o in outputs.values()):
                self.batchable = False  # e.g. a detector's boxes of all images in one list: never stack again
                return None
            parts.append({name: o[:take] for name, o in outputs.items()})
            start += take
        joined = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        bounds = np.cumsum(rows)[:-1]
        per_request = {name: np.split(o, bounds) for name, o in joined.items()}
        return [{name: split[i] for name, split in per_request.items()} for i in range(len(requests))]


class TensorKind(ModelKind):
    name = "tensor"
    worker = TensorWorker

    def transport(self, config: ModelConfig) -> PipeTransport:
        return PipeTransport()

    def batching(self, config: ModelConfig) -> TensorBatching:
        return TensorBatching(config)

    @staticmethod
    def _signature(version: Version) -> Signature:
        signature = version.signature
        if signature is None:
            raise BadRequest(f"model {version.name!r} has not started yet: its signature is unknown")
        return signature

    def inputs(self, version: Version) -> list[TensorSpec]:
        return list(version.signature.inputs) if version.signature is not None else []

    def outputs(self, version: Version) -> list[TensorSpec]:
        return list(version.signature.outputs) if version.signature is not None else []

    def from_tensors(self, version: Version, tensors: Sequence[NamedTensor], ctx: DecodeContext) -> Work:
        feeds: Feeds = {}
        for tensor in tensors:
            if tensor.array is None:
                raise BadRequest(f"input {tensor.name!r}: BYTES inputs are not served for tensor models")
            if tensor.name in feeds:
                raise BadRequest(f"input {tensor.name!r} is given twice")
            feeds[tensor.name] = tensor.array
        wanted = {s.name: s for s in self._signature(version).inputs}
        unknown, missing = sorted(set(feeds) - set(wanted)), sorted(set(wanted) - set(feeds))
        if unknown or missing:
            raise BadRequest(
                f"model {version.name!r} takes inputs {sorted(wanted)}; unknown {unknown}, missing {missing}"
            )
        for name, array in feeds.items():
            spec = wanted[name]
            if array.dtype != np.dtype(spec.dtype):
                raise BadRequest(f"input {name!r} is {array.dtype}, the model takes {spec.dtype}")
            fits = len(array.shape) == len(spec.shape)
            if not fits or any(d not in (-1, a) for d, a in zip(spec.shape, array.shape, strict=True)):
                raise BadRequest(f"input {name!r} has shape {list(array.shape)}, the model takes {list(spec.shape)}")
        return Work(1, ready_items([feeds]))

    def to_tensors(
        self, version: Version, outputs: list[Any], wanted: Sequence[WantedOutput]
    ) -> list[tuple[str, np.ndarray]]:
        (result,) = outputs
        named: Feeds = dict(result)
        chosen = []
        for want in wanted or [WantedOutput(n) for n in named]:
            if want.name not in named:
                raise BadRequest(f"unknown output {want.name!r}; model {version.name!r} has {sorted(named)}")
            if want.classification is not None:
                raise BadRequest("parameters.classification applies to image models only")
            chosen.append((want.name, named[want.name]))
        return chosen
