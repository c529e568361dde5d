"""A Paddle program's signature (named inputs and outputs with dtypes and shapes), read from the
program itself, and the Paddle errors that mean "this input cannot go through this model".

Predictor handles report nothing useful before a run (shape ``[0]``, and not always the right
dtype), so the signature comes from the feed and fetch variables of ``model.pdmodel``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.errors import PdserveError

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
