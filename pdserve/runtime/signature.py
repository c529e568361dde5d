"""A Paddle program's signature (named inputs and outputs with dtypes and shapes), read from the
program itself, and the Paddle errors that mean "this input cannot go through this model".

Predictor handles report nothing useful before a run (shape ``[0]``, and not always the right
dtype), so the signature comes from the program file: the feed and fetch variables of a legacy
``.pdmodel`` (protobuf), or the ``data`` and ``fetch`` ops of a Paddle 3 PIR ``.json`` program.
"""

from __future__ import annotations

import json
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


# PIR's serialized type names (paddle/fluid/pir/serialize_deserialize) -> numpy dtypes
_PIR_DTYPES = {
    "0.t_bool": "bool",
    "0.t_ui8": "uint8",
    "0.t_i8": "int8",
    "0.t_i16": "int16",
    "0.t_i32": "int32",
    "0.t_i64": "int64",
    "0.t_f16": "float16",
    "0.t_f32": "float32",
    "0.t_f64": "float64",
}


def read_signature(model_file: Path) -> Signature:
    """The program's inputs and outputs, in feed and fetch order."""
    if model_file.suffix == ".json":
        return read_pir_signature(model_file)
    return read_legacy_signature(model_file)


def _attr(op: dict[str, Any], name: str) -> Any:
    return next(a["AT"]["D"] for a in op.get("A", []) if isinstance(a, dict) and a.get("N") == name)


def _pir_spec(name: str, tensor_type: dict[str, Any]) -> TensorSpec:
    """A ``0.t_dtensor`` type: ``D`` is [element type, dims, layout, lod, offset]."""
    if tensor_type.get("#") != "0.t_dtensor":
        raise PdserveError(f"tensor {name!r} has type {tensor_type.get('#')}, not a dense tensor pdserve can serve")
    element, dims = tensor_type["D"][0]["#"], tensor_type["D"][1]
    if element not in _PIR_DTYPES:
        raise PdserveError(f"tensor {name!r} has datatype {element}, which pdserve cannot serve")
    return TensorSpec(name, _PIR_DTYPES[element], tuple(int(d) for d in dims))


def read_pir_signature(model_file: Path) -> Signature:
    """From a PIR program's JSON: ``data`` ops (attributes name, dtype, shape; their result's type) are
    the inputs, in program order; ``fetch`` ops (attributes name, col) the outputs, by ``col``. The
    names are those the predictor's ``get_input_names`` / ``get_output_names`` report."""
    try:
        doc = json.loads(model_file.read_text())
        if doc["base_code"]["magic"] != "pir":
            raise ValueError("magic is not 'pir'")
        ops = doc["program"]["regions"][0]["blocks"][0]["ops"]
        inputs, fetches = [], []
        for op in ops:
            op_name = op["#"].rsplit(".", 1)[-1]  # "<dialect id>.<op>", e.g. "1.data" (pd_op.data)
            if op_name == "data":
                inputs.append(_pir_spec(_attr(op, "name"), op["O"][0]["TT"]))
            elif op_name == "fetch":
                fetches.append((int(_attr(op, "col")), _pir_spec(_attr(op, "name"), op["O"][0]["TT"])))
    except (ValueError, KeyError, IndexError, TypeError, StopIteration) as exc:
        raise PdserveError(f"{model_file}: not a PIR program pdserve can read ({type(exc).__name__}: {exc})") from None
    outputs = tuple(spec for _, spec in sorted(fetches, key=lambda f: f[0]))
    return Signature(tuple(inputs), outputs)


def read_legacy_signature(model_file: Path) -> Signature:
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
