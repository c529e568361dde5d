"""The v2 tensor codec: JSON and binary requests, responses, compression, and malformed input."""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from pdserve.api.v2.tensors import OutputTensor, compress, decompress, encode_response, parse_request
from pdserve.errors import BadRequest, PayloadTooLarge


def _binary(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), str(len(head))


def test_json_numeric_tensor_is_reshaped() -> None:
    body = json.dumps({"id": "7", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    request = parse_request(body.encode(), None)
    assert request.id == "7"
    tensor = request.inputs[0]
    assert tensor.array is not None
    assert tensor.array.dtype == np.float32
    assert tensor.array.tolist() == [[1, 2], [3, 4]]
    assert request.outputs is None


def test_binary_bytes_and_numeric_inputs_in_order() -> None:
    images = [b"abc", b""]
    packed = b"".join(struct.pack("<I", len(i)) + i for i in images)
    floats = np.arange(3, dtype=np.float32)
    header = {
        "inputs": [
            {"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(packed)}},
            {"name": "x", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
        ],
        "outputs": [{"name": "p", "parameters": {"binary_data": True, "classification": 2}}],
    }
    body, length = _binary(header, packed, floats.tobytes())
    request = parse_request(body, length)
    assert request.inputs[0].elements == images
    assert request.inputs[1].array is not None
    assert request.inputs[1].array.tolist() == [0, 1, 2]
    assert request.outputs is not None
    assert (request.outputs[0].binary, request.outputs[0].classification) == (True, 2)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": []}, "non-empty 'inputs'"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": ["FP32"], "data": [1]}]}, "datatype"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]}, "datatype"),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}, "negative"),
        ({"inputs": [{"name": "x", "shape": "3", "datatype": "FP32", "data": [1]}]}, "'shape'"),
        ({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}, "2 elements for shape"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}, "not all FP32"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}]}, "must be strings"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "needs 'data'"),
        ({"inputs": [{"name": "", "shape": [1], "datatype": "FP32", "data": [1]}]}, "'name'"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "id": 5}, "'id'"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": [{}]}, "outputs[0]"),
        (
            {
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "outputs": [{"name": "p", "parameters": {"classification": 0}}],
            },
            "classification",
        ),
    ],
)
def test_malformed_requests_are_bad_requests(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_request(json.dumps(doc).encode(), None)


def test_binary_sizes_must_add_up() -> None:
    header = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    body, length = _binary(header, b"\0" * 8, b"extra")
    with pytest.raises(BadRequest, match="5 bytes of binary data are not claimed"):
        parse_request(body, length)
    body, length = _binary(header, b"\0" * 4)
    with pytest.raises(BadRequest, match="does not fit"):
        parse_request(body, length)
    with pytest.raises(BadRequest, match="Inference-Header-Content-Length"):
        parse_request(b"{}", "999")
    packed = struct.pack("<I", 100) + b"short"
    header = {"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}
    body, length = _binary(header, packed)
    with pytest.raises(BadRequest, match="runs past the data"):
        parse_request(body, length)


def test_deeply_nested_data_is_flattened_without_recursion() -> None:
    data: object = [1.0]
    for _ in range(300):
        data = [data]
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": data}]})
    assert parse_request(body.encode(), None).inputs[0].array is not None


def test_responses_json_and_binary() -> None:
    probs = np.array([[0.25, 0.75]], np.float32)
    body, length = encode_response("m", 1, "id-1", [OutputTensor("p", "FP32", [1, 2], array=probs)])
    assert length is None
    doc = json.loads(body)
    assert doc == {
        "model_name": "m",
        "model_version": "1",
        "id": "id-1",
        "outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}],
    }
    labels = [b"0.75:1:cat"]
    body, length = encode_response("m", 1, None, [OutputTensor("c", "BYTES", [1, 1], elements=labels, binary=True)])
    assert length is not None
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 4 + len(labels[0])
    assert body[length:] == struct.pack("<I", len(labels[0])) + labels[0]


def test_compression_both_ways_and_inflation_bounded() -> None:
    data = b"x" * 10_000
    assert decompress(gzip.compress(data), "gzip", 20_000) == data
    assert decompress(zlib.compress(data), "deflate", 20_000) == data
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(b"\0" * 1_000_000), "gzip", 10_000)  # a zip bomb stops at the limit
    with pytest.raises(BadRequest, match="not valid gzip"):
        decompress(b"not gzip", "gzip", 100)
    with pytest.raises(BadRequest, match="not supported"):
        decompress(data, "br", 100)
    packed, encoding = compress(data, "deflate, gzip;q=0.5")
    assert encoding == "gzip"
    assert gzip.decompress(packed) == data
    assert compress(data, "") == (data, None)
