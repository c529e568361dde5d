"""KServe v2 / Open Inference Protocol tensors: JSON and the binary tensor extension, both ways.

A request body is a JSON header, optionally followed by binary tensor data: the header's length is
in ``Inference-Header-Content-Length`` and each binary input says its size in
``parameters.binary_data_size``, in input order. ``BYTES`` elements in binary are each a 4-byte
little-endian length and the bytes. Responses mirror this: outputs asked for in binary (per output
``parameters.binary_data``, or ``binary_data_output`` for all) follow the JSON header.
Nothing here knows about models or HTTP; ``routes.py`` does.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pdserve.errors import BadRequest, PayloadTooLarge

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
HEADER_LENGTH = "inference-header-content-length"


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None  # numeric datatypes
    elements: list[bytes] | None = None  # BYTES, row-major
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's binary_data_output says
    classification: int | None = None


@dataclass
class InferRequest:
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def binary_output(self) -> bool:
        return bool(self.parameters.get("binary_data_output", False))


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None
    elements: list[bytes] | None = None
    binary: bool = False


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip or deflate), never inflating past ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    # wbits: 16 + MAX_WBITS reads gzip, MAX_WBITS reads zlib ("deflate" in HTTP means zlib)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes (PDSERVE_MAX_BODY_BYTES)")
    return out


def compress(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """Compress a response as the client accepts (gzip preferred), or leave it."""
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise BadRequest(f"{where}: 'shape' must be a list of integers")
    if any(d < 0 for d in value):
        raise BadRequest(f"{where}: 'shape' must not have negative dimensions")
    return value


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative, so deep nesting cannot exhaust the stack
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _split_bytes(raw: bytes, where: str) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"{where}: BYTES data ends inside an element's length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest(f"{where}: BYTES element of {size} bytes runs past the data")
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def _parse_input(doc: Any, index: int, body: bytes, offset: int) -> tuple[InputTensor, int]:
    where = f"inputs[{index}]"
    if not isinstance(doc, dict):
        raise BadRequest(f"{where} must be an object")
    name, datatype = doc.get("name"), doc.get("datatype")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}: 'name' must be a non-empty string")
    where = f"input {name!r}"
    if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in DATATYPES):
        raise BadRequest(f"{where}: datatype {datatype!r} is not one of {['BYTES', *DATATYPES]}")
    shape = _shape(doc.get("shape"), where)
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object")
    count = math.prod(shape)
    tensor = InputTensor(name, datatype, shape, parameters=parameters)
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise BadRequest(f"{where}: binary_data_size {size!r} does not fit the {len(body) - offset} bytes left")
        raw = body[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            tensor.elements = _split_bytes(raw, where)
        else:
            itemsize = DATATYPES[datatype].itemsize
            if len(raw) != count * itemsize:
                raise BadRequest(f"{where}: {len(raw)} bytes for shape {shape} of {datatype} ({count * itemsize})")
            tensor.array = np.frombuffer(raw, DATATYPES[datatype]).reshape(shape)
    elif "data" in doc:
        flat = _flatten(doc["data"])
        if datatype == "BYTES":
            if not all(isinstance(x, str) for x in flat):
                raise BadRequest(f"{where}: BYTES data must be strings")
            tensor.elements = [x.encode("utf-8", "surrogatepass") for x in flat]
        else:
            try:
                tensor.array = np.asarray(flat, DATATYPES[datatype])
            except (TypeError, ValueError, OverflowError):
                raise BadRequest(f"{where}: data is not all {datatype}") from None
            if tensor.array.size != count:
                raise BadRequest(f"{where}: {tensor.array.size} elements for shape {shape} ({count})")
            tensor.array = tensor.array.reshape(shape)
    else:
        raise BadRequest(f"{where}: needs 'data' or parameters.binary_data_size")
    if tensor.elements is not None and len(tensor.elements) != count:
        raise BadRequest(f"{where}: {len(tensor.elements)} BYTES elements for shape {shape} ({count})")
    return tensor, offset


def _parse_output(doc: Any, index: int) -> RequestedOutput:
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise BadRequest(f"outputs[{index}] must be an object with a 'name'")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"output {doc['name']!r}: 'parameters' must be an object")
    classification = parameters.get("classification")
    if classification is not None and (not isinstance(classification, int) or classification < 1):
        raise BadRequest(f"output {doc['name']!r}: parameters.classification must be a positive integer")
    binary = parameters.get("binary_data")
    return RequestedOutput(doc["name"], None if binary is None else bool(binary), classification)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON plus binary tensors)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body")
        split = int(header_length)
    else:
        split = len(body)
    try:
        doc = json.loads(body[:split])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request header is not valid JSON") from None
    except RecursionError:
        raise BadRequest("request header is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest("request must be a JSON object with 'inputs'")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    inputs, offset = [], split
    for index, item in enumerate(raw_inputs):
        tensor, offset = _parse_input(item, index, body, offset)
        inputs.append(tensor)
    if offset != len(body):
        raise BadRequest(f"{len(body) - offset} bytes of binary data are not claimed by any input")
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None and not isinstance(raw_outputs, list):
        raise BadRequest("'outputs' must be a list")
    outputs = [_parse_output(o, i) for i, o in enumerate(raw_outputs)] if raw_outputs else None
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    return InferRequest(inputs, outputs, request_id, parameters)


def _json_value(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x  # JSON has no NaN or infinity


def encode_response(
    model: str, version: int, request_id: str | None, outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    chunks: list[bytes] = []
    docs: list[dict[str, Any]] = []
    for out in outputs:
        doc: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            if out.elements is not None:
                raw = b"".join(struct.pack("<I", len(e)) + e for e in out.elements)
            else:
                assert out.array is not None
                raw = np.ascontiguousarray(out.array).tobytes()
            doc["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif out.elements is not None:
            doc["data"] = [e.decode("utf-8", "replace") for e in out.elements]
        else:
            assert out.array is not None
            doc["data"] = [_json_value(x) for x in out.array.ravel().tolist()]
        docs.append(doc)
    header: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": docs}
    if request_id is not None:
        header["id"] = request_id
    head = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
