"""v2 ``infer``: the KServe v2 / Open Inference Protocol's inference, JSON or the binary tensor
extension, as Triton speaks it (tritonclient works as is).

A thin adapter over the same data plane as the REST API (``InferenceService``): the same
repository, admission, deadlines and batcher; no second inference path. What inputs a model takes
and which outputs it answers are its kind's: an image model takes encoded images as the ``BYTES``
input ``image`` (shape ``[N]`` or ``[N, 1]``; base64 strings in JSON, raw bytes in binary) or
preprocessed ``FP32`` ``[N, C, H, W]`` under its own input name, and answers ``probabilities``;
asking for an output with ``parameters.classification: k``, or for the output
``classification``, gives Triton's top-k strings ``"score:index:label"``. A tensor model takes
and answers its program's own named tensors.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
from fastapi import APIRouter, Request, Response

from pdserve.api.accounting import Accounted, unless_disconnected
from pdserve.api.auth import ApiKey
from pdserve.api.deps import Service
from pdserve.api.inputs import BodyLimits, read_body
from pdserve.api.v2.metadata import ModelName, VersionPath, _errors, _version, v2_type
from pdserve.api.v2.tensors import (
    HEADER_LENGTH,
    InferRequest,
    InputTensor,
    OutputTensor,
    compress,
    decompress,
    encode_response,
    parse_request,
)
from pdserve.errors import BadRequest, PayloadTooLarge
from pdserve.service import InferenceService, ModelVersion, NamedTensor, WantedOutput

router = APIRouter(prefix="/v2", tags=["v2 (KServe / Open Inference Protocol)"])
IMAGE_INPUT = "image"  # the example's input name (the image kind's)
PROBABILITIES = "probabilities"
_INFER = _errors(400, 401, 404, 408, 413, 422, 429, 500, 503, 504)


_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string"},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                },
                "example": {
                    "id": "1",
                    "inputs": [{"name": IMAGE_INPUT, "shape": [1], "datatype": "BYTES", "data": ["<base64 JPEG>"]}],
                    "outputs": [{"name": PROBABILITIES, "parameters": {"classification": 5}}],
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "The binary tensor extension: a JSON header of Inference-Header-Content-Length "
                "bytes, then each binary input's data",
            },
        },
    }
}


# ---- inference ---------------------------------------------------------------------------------


def _named(tensor: InputTensor) -> NamedTensor:
    """An input as the kinds take it: BYTES elements as bytes (base64 strings in JSON), numbers as an array."""
    if tensor.elements is None or "binary_data_size" in tensor.parameters:
        return NamedTensor(tensor.name, tuple(tensor.shape), tensor.array, tensor.elements)
    try:  # JSON cannot carry raw bytes: encoded images come as base64 strings
        elements = [base64.b64decode(e, validate=True) for e in tensor.elements]
    except (binascii.Error, ValueError):
        raise BadRequest(f"input {tensor.name!r}: in JSON, each BYTES element must be a base64 string") from None
    return NamedTensor(tensor.name, tuple(tensor.shape), None, elements)


def _deadline(service: InferenceService, target: ModelVersion, request: InferRequest) -> float:
    timeout_us = request.parameters.get("timeout")
    if timeout_us is None:
        return service.deadline(target, None)
    if not isinstance(timeout_us, int) or timeout_us < 1:
        raise BadRequest("parameters.timeout must be a positive integer of microseconds")
    return service.deadline(target, timeout_us / 1000)


def _output(name: str, array: np.ndarray, binary: bool) -> OutputTensor:
    shape = list(array.shape)
    if array.dtype == object:
        return OutputTensor(name, "BYTES", shape, elements=list(array.ravel()), binary=binary)
    return OutputTensor(name, v2_type(array.dtype.name), shape, array=array, binary=binary)


async def _outputs_for(
    service: InferenceService, target: ModelVersion, request: InferRequest, deadline: float
) -> list[OutputTensor]:
    asked = request.outputs or []
    wanted = [WantedOutput(w.name, w.classification) for w in asked]
    binary = {w.name: request.binary_output if w.binary is None else w.binary for w in asked}
    named = await service.infer(target, [_named(t) for t in request.inputs], wanted, deadline)
    return [_output(name, array, binary.get(name, request.binary_output)) for name, array in named]


_USE_BINARY = (
    "Large tensors go in the binary tensor extension (Inference-Header-Content-Length; tritonclient: "
    "set_data_from_numpy(..., binary_data=True)), where a float32 takes 4 bytes instead of up to 20 in JSON"
)


async def infer_response(request: Request, service: InferenceService, name: str, version: str | None) -> Response:
    """The answer to a v2 infer request (the routes below, and the front door's direct path)."""
    settings = service.settings
    with Accounted(service) as accounted:
        service.lifecycle.check_accepting()
        target = service.resolve(name, _version(version))
        accounted.enter(target)
        service.check_room(target)
        limits = BodyLimits(settings.max_body_bytes, settings.body_timeout_s, settings.max_images_per_request)
        try:
            body = await read_body(request, limits, service.limits)
        except PayloadTooLarge as exc:
            if request.headers.get(HEADER_LENGTH) is None:  # JSON tensors: the binary form is 3-5x smaller
                raise PayloadTooLarge(f"{exc.message}. {_USE_BINARY}") from None
            raise
        body = decompress(body, request.headers.get("content-encoding"), settings.max_body_bytes)
        infer = parse_request(body, request.headers.get(HEADER_LENGTH))
        deadline = _deadline(service, target, infer)
        outputs = await unless_disconnected(request, _outputs_for(service, target, infer, deadline))
        payload, header_length = encode_response(target.name, target.version, infer.id, outputs)
        headers: dict[str, str] = {}
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = str(header_length)
        payload, encoding = compress(payload, request.headers.get("accept-encoding", ""))
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        media = "application/octet-stream" if header_length is not None else "application/json"
        return Response(payload, media_type=media, headers=headers)


@router.post(
    "/models/{name}/infer",
    summary="Inference (JSON or the binary tensor extension)",
    responses={200: {"description": "Outputs, as JSON or JSON plus binary"}, **_INFER},
    openapi_extra=_INFER_BODY,
)
async def infer(request: Request, name: ModelName, service: Service, _: ApiKey) -> Response:
    return await infer_response(request, service, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on a version",
    responses={200: {"description": "Outputs, as JSON or JSON plus binary"}, **_INFER},
    openapi_extra=_INFER_BODY,
)
async def infer_version(
    request: Request, name: ModelName, version: VersionPath, service: Service, _: ApiKey
) -> Response:
    return await infer_response(request, service, name, version)
