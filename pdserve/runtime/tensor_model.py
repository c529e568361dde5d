"""Any Paddle inference model served as tensors: its signature read from the program itself, and
a worker loop that feeds named arrays in and returns every output.

Predictor handles report nothing useful before a run (shape ``[0]``, and not always the right
dtype), so the signature comes from the feed and fetch variables of ``model.pdmodel``. Tensors
cross the pipe pickled: these models have shapes known only per request, unlike the fixed-shape
image models whose batches go through shared memory.
"""

from __future__ import annotations

import os
import re
import time
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.errors import PdserveError
from pdserve.runtime.predictor_config import build_predictor, plan_predictor

# framework.proto VarType names -> numpy dtypes
_DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]  # -1 where any size goes


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batchable(self) -> bool:
        """Every input and output has a free first dimension: requests can be stacked along it."""
        return all(s.shape[:1] == (-1,) for s in (*self.inputs, *self.outputs))


def read_signature(model_file: Path) -> Signature:
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString(model_file.read_bytes())
    block = desc.blocks[0]
    variables = {v.name: v for v in block.vars}

    def col(op: Any) -> int:
        return int(next(a.i for a in op.attrs if a.name == "col"))

    def spec(name: str) -> TensorSpec:
        tensor = variables[name].type.dense_tensor.tensor
        kind = framework_pb2.VarType.Type.Name(tensor.data_type)
        if kind not in _DTYPES:
            raise PdserveError(f"tensor {name!r} has datatype {kind}, which pdserve cannot serve")
        return TensorSpec(name, _DTYPES[kind], tuple(int(d) for d in tensor.dims))

    feeds = sorted((op for op in block.ops if op.type == "feed"), key=col)
    fetches = sorted((op for op in block.ops if op.type == "fetch"), key=col)
    inputs = tuple(spec(next(o for o in op.outputs if o.parameter == "Out").arguments[0]) for op in feeds)
    outputs = tuple(spec(next(i for i in op.inputs if i.parameter == "X").arguments[0]) for op in fetches)
    return Signature(inputs, outputs)


# Paddle's enforce categories that mean "this input cannot go through this model", as opposed to a
# broken model or runtime (PreconditionNotMet, Fatal, ResourceExhausted, ...): they come back as 400.
_INPUT_ERRORS = ("InvalidArgument", "OutOfRange", "Unimplemented")
_PADDLE_ERROR = re.compile(r"^\((\w+)\) (.*?)(?:\s*\[Hint:.*?\])?\s*(?:\(at [^)]*\))?\s*$", re.S)
_OPERATOR = re.compile(r"\[operator < (\w+) > error\]")


def input_error(exc: BaseException, feeds: dict[str, np.ndarray]) -> str | None:
    """A short message for a Paddle error that an input caused, naming the inputs; None for others.

    Paddle's text is a paragraph with a C++ location and an operator line; the client gets its
    first line, the operator, and the shapes it sent."""
    text = str(exc).strip()
    head, _, rest = text.partition("\n")
    match = _PADDLE_ERROR.match(head)
    if match is None or match.group(1) not in _INPUT_ERRORS:
        return None
    reason = match.group(2).rstrip(". ")
    operator = _OPERATOR.search(rest)
    where = f" (operator {operator.group(1)})" if operator else ""
    sent = ", ".join(f"{name} {list(a.shape)} {a.dtype}" for name, a in feeds.items())
    return f"the model cannot run inputs {sent}: {reason[:300]}{where}"


def tensor_worker_main(spec: Any, conn: Connection) -> None:
    """The worker loop of a tensor model: ``("run", id, {name: array})`` -> ``("done", id, s, {name: array})``."""
    from pdserve.runtime.worker import _ignore_group_signals

    os.nice(spec.nice)
    warnings.filterwarnings("ignore", message="No ccache found")
    _ignore_group_signals()
    try:
        import paddle

        plan = plan_predictor(spec.config, spec.version_dir, paddle.device.is_compiled_with_cuda(), spec.model)
        signature = read_signature(plan.model_file)
        predictor = build_predictor(plan)
        _ignore_group_signals()
    except Exception as exc:
        message = str(exc) if isinstance(exc, PdserveError) else f"model {spec.model!r}: {type(exc).__name__}: {exc}"
        conn.send(("load_failed", message))
        conn.close()
        return
    conn.send(("ready", (), os.getpid(), 0.0, signature))
    inputs = {s.name: predictor.get_input_handle(s.name) for s in signature.inputs}
    outputs = {s.name: predictor.get_output_handle(s.name) for s in signature.outputs}
    while True:
        try:
            msg: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):  # parent gone
            break
        if msg[0] == "stop":
            break
        _, batch_id, feeds = msg
        try:
            start = time.perf_counter()
            for name, array in feeds.items():
                inputs[name].reshape(list(array.shape))
                inputs[name].copy_from_cpu(np.ascontiguousarray(array))
            predictor.run()
            result = {name: handle.copy_to_cpu() for name, handle in outputs.items()}
            conn.send(("done", batch_id, time.perf_counter() - start, result))
        except Exception as exc:
            refused = input_error(exc, feeds)
            if refused is not None:  # the client's input, not the model: no traceback in the log
                conn.send(("rejected", batch_id, refused))
                continue
            traceback.print_exc()
            conn.send(("failed", batch_id, f"{type(exc).__name__}: {exc}"))
