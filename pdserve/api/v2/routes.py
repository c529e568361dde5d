"""The KServe v2 / Open Inference Protocol over HTTP, as Triton speaks it (tritonclient works as is).

A thin adapter over the same data plane as the REST API (``InferenceService``): the same
repository, admission, deadlines and batcher; no second inference path. An image model takes
either encoded images as the ``BYTES`` input ``image`` (shape ``[N]`` or ``[N, 1]``; base64
strings in JSON, raw bytes in binary) or preprocessed ``FP32`` ``[N, C, H, W]`` under its own
input name, and answers ``probabilities`` (``FP32 [N, classes]``); asking for an output with
``parameters.classification: k``, or for the output ``classification``, gives Triton's top-k
strings ``"score:index:label"``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from pdserve.api.accounting import Accounted, unless_disconnected
from pdserve.api.auth import ApiKey
from pdserve.api.deps import Service
from pdserve.api.health import readiness
from pdserve.api.inputs import BodyLimits, read_body
from pdserve.api.v2.tensors import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    compress,
    decompress,
    encode_response,
    parse_request,
)
from pdserve.errors import BadRequest, ModelNotFound, PayloadTooLarge
from pdserve.service import InferenceService, ModelEntry, ModelVersion, Signature, TensorSpec, top_k

router = APIRouter(prefix="/v2", tags=["v2 (KServe / Open Inference Protocol)"])
IMAGE_INPUT = "image"
PROBABILITIES = "probabilities"
CLASSIFICATION = "classification"
DEFAULT_CLASSES = 5
PLATFORM = "paddle_inference"
EXTENSIONS = ["binary_tensor_data", "classification", "statistics", "model_configuration"]

ModelName = Annotated[str, Path(description="Model name")]
VersionPath = Annotated[str, Path(description="Model version (a positive integer)", pattern=r"^[1-9][0-9]*$")]


class V2Error(BaseModel):
    error: str = Field(examples=["unknown model 'resnet'"])
    request_id: str | None = Field(None, description="The request's id, as in its X-Request-ID response header.")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    texts = {
        400: "Malformed request: JSON, tensors, shapes, datatypes, unknown inputs or outputs",
        401: "A missing or wrong Authorization: Bearer key",
        403: "The management API is disabled (no admin key configured)",
        404: "Unknown model or version",
        408: "The body did not arrive in time",
        413: "Body, image or image count over its limit",
        422: "A path parameter of the wrong form",
        429: "Refused at admission (overloaded); retry after Retry-After seconds",
        500: "A bug",
        503: "Model not ready or recovering, worker died or hung, server shutting down, or model unavailable",
        504: "The request's deadline (parameters.timeout) passed",
    }
    return {code: {"model": V2Error, "description": texts[code]} for code in codes}


_EMPTY: dict[int | str, dict[str, Any]] = {200: {"description": "Yes", "content": {}}}
_READ = _errors(400, 404, 422)
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


def _version(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise BadRequest(f"model version {value!r} is not a positive integer")
    return int(value)


def _entry(service: InferenceService, name: str) -> ModelEntry:
    entry = service.find_model(name)
    if entry is None:
        raise ModelNotFound(f"unknown model {name!r}")
    return entry


# ---- server ------------------------------------------------------------------------------------


@router.get("", summary="Server metadata", responses=_errors(500))
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": "pdserve", "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live", summary="200 while the process is alive", response_class=Response, responses=_EMPTY)
async def live() -> Response:
    return Response(status_code=200)


@router.get(
    "/health/ready",
    summary="200 when every required model serves and the server is not draining",
    response_class=Response,
    responses={**_EMPTY, 503: {"description": "Not ready", "content": {}}},
)
async def ready(service: Service) -> Response:
    return Response(status_code=200 if readiness(service).ready else 503)


# ---- models ------------------------------------------------------------------------------------


def _v2_type(dtype: str) -> str:
    return next(k for k, v in DATATYPES.items() if v == np.dtype(dtype))


def _signature(target: ModelVersion | None) -> Signature | None:
    return target.signature if target is not None else None


def _tensor_io(target: ModelVersion | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A tensor model's inputs and outputs as the model itself declares them (-1: any size)."""
    signature = _signature(target)
    if signature is None:
        return [], []

    def doc(spec: TensorSpec) -> dict[str, Any]:
        return {"name": spec.name, "datatype": _v2_type(spec.dtype), "shape": list(spec.shape)}

    return [doc(s) for s in signature.inputs], [doc(s) for s in signature.outputs]


def _metadata(service: InferenceService, name: str, version: str | None) -> dict[str, Any]:
    entry = _entry(service, name)
    config = entry.config
    if config is None:
        raise ModelNotFound(f"model {name!r} could not be read: {entry.error}")
    v = _version(version)
    if v is not None and v not in entry.versions:
        raise ModelNotFound(f"model {name!r} has no version {v}")
    target = entry.versions[v] if v is not None else entry.latest
    if config.kind == "tensor":
        inputs, outputs = _tensor_io(target)
        versions = [str(x) for x in sorted(entry.versions)]
        return {"name": name, "versions": versions, "platform": PLATFORM, "inputs": inputs, "outputs": outputs}
    shape = target.output_shape if target is not None else None
    classes = list(shape) if shape is not None else [-1]
    return {
        "name": name,
        "versions": [str(x) for x in sorted(entry.versions)],
        "platform": PLATFORM,
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": config.input.name, "datatype": "FP32", "shape": [-1, *config.input.shape]},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, *classes]},
            {"name": CLASSIFICATION, "datatype": "BYTES", "shape": [-1, -1]},
        ],
    }


@router.get("/models/stats", summary="Statistics of every model (Triton's statistics extension)", responses=_READ)
async def all_stats(service: Service) -> dict[str, Any]:
    return _stats(service, None, None)


@router.get("/models/{name}", summary="Model metadata: versions, platform, inputs and outputs", responses=_READ)
async def model_metadata(name: ModelName, service: Service) -> dict[str, Any]:
    return _metadata(service, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model version metadata", responses=_READ)
async def model_version_metadata(name: ModelName, version: VersionPath, service: Service) -> dict[str, Any]:
    return _metadata(service, name, version)


def _ready(service: InferenceService, name: str, version: str | None) -> Response:
    entry = _entry(service, name)
    v = _version(version)
    if v is None:
        serving = entry.serving
    else:
        if v not in entry.versions:
            raise ModelNotFound(f"model {name!r} has no version {v}")
        serving = entry.versions[v].serving
    return Response(status_code=200 if serving else 503)


@router.get(
    "/models/{name}/ready",
    summary="200 when the model has an instance serving",
    response_class=Response,
    responses={**_EMPTY, **_READ, 503: {"description": "Not serving", "content": {}}},
)
async def model_ready(name: ModelName, service: Service) -> Response:
    return _ready(service, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="200 when the version has an instance serving",
    response_class=Response,
    responses={**_EMPTY, **_READ, 503: {"description": "Not serving", "content": {}}},
)
async def model_version_ready(name: ModelName, version: VersionPath, service: Service) -> Response:
    return _ready(service, name, version)


def _config(service: InferenceService, name: str) -> dict[str, Any]:
    """The model's configuration in the shape of Triton's model config."""
    entry = _entry(service, name)
    c = entry.config
    if c is None:
        raise ModelNotFound(f"model {name!r} could not be read: {entry.error}")
    latest = entry.latest
    shape = latest.output_shape if latest is not None else None
    classes = list(shape) if shape is not None else [-1]
    if c.kind == "tensor":
        ins, outs = _tensor_io(latest)
        config_inputs = [{"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": t["shape"]} for t in ins]
        config_outputs = [{"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": t["shape"]} for t in outs]
    else:
        config_inputs = [
            {"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "dims": [1]},
            {"name": c.input.name, "data_type": "TYPE_FP32", "dims": list(c.input.shape)},
        ]
        config_outputs = [{"name": PROBABILITIES, "data_type": "TYPE_FP32", "dims": classes}]
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": "paddle",
        "max_batch_size": c.max_batch_size,
        "input": config_inputs,
        "output": config_outputs,
        "dynamic_batching": {
            "preferred_batch_size": list(c.padded_batch_sizes),
            "max_queue_delay_microseconds": int(c.max_queue_delay_ms * 1000),
            "default_queue_policy": {
                "max_queue_size": c.max_queue_size,
                "default_timeout_microseconds": int((c.timeout_ms or service.settings.request_timeout_s * 1000) * 1000),
                "allow_timeout_override": True,
                "timeout_action": "REJECT",
            },
        },
        "instance_group": [
            {"count": c.instances, "kind": "KIND_GPU" if c.gpu_id is not None else "KIND_CPU"}
            | ({"gpus": [c.gpu_id]} if c.gpu_id is not None else {})
        ],
        "parameters": {
            "precision": {"string_value": c.precision},
            "cpu_threads": {"string_value": str(c.cpu_threads)},
            "compute_timeout_ms": {"string_value": str(c.compute_timeout_ms or "")},
        },
    }


@router.get(
    "/models/{name}/config", summary="Model configuration (Triton's model configuration extension)", responses=_READ
)
async def model_config(name: ModelName, service: Service) -> dict[str, Any]:
    return _config(service, name)


@router.get("/models/{name}/versions/{version}/config", summary="Model configuration", responses=_READ)
async def model_version_config(name: ModelName, version: VersionPath, service: Service) -> dict[str, Any]:
    _version(version)
    return _config(service, name)


def _stats(service: InferenceService, name: str | None, version: str | None) -> dict[str, Any]:
    v = _version(version)
    entries = [_entry(service, name)] if name else service.models()
    stats = []
    for entry in entries:
        for number, mv in sorted(entry.versions.items()):
            if v is None or number == v:
                stats.append(mv.stats.as_triton(entry.name, number))
    if name and v is not None and not stats:
        raise ModelNotFound(f"model {name!r} has no version {v}")
    return {"model_stats": stats}


@router.get("/models/{name}/stats", summary="Cumulative counts and times of a model's versions", responses=_READ)
async def model_stats(name: ModelName, service: Service) -> dict[str, Any]:
    return _stats(service, name, None)


@router.get(
    "/models/{name}/versions/{version}/stats", summary="Cumulative counts and times of a version", responses=_READ
)
async def model_version_stats(name: ModelName, version: VersionPath, service: Service) -> dict[str, Any]:
    return _stats(service, name, version)


# ---- inference ---------------------------------------------------------------------------------


def _images(tensor: InputTensor) -> list[bytes]:
    if tensor.elements is None:
        raise BadRequest(f"input {IMAGE_INPUT!r} must be BYTES (encoded images)")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise BadRequest(f"input {IMAGE_INPUT!r} must have shape [N] or [N, 1], not {tensor.shape}")
    if "binary_data_size" in tensor.parameters:
        return tensor.elements
    try:  # JSON cannot carry raw bytes: images come as base64 strings
        return [base64.b64decode(e, validate=True) for e in tensor.elements]
    except (binascii.Error, ValueError):
        raise BadRequest(f"input {IMAGE_INPUT!r}: in JSON, each image must be a base64 string") from None


def _deadline(service: InferenceService, target: ModelVersion, request: InferRequest) -> float:
    timeout_us = request.parameters.get("timeout")
    if timeout_us is None:
        return service.deadline(target, None)
    if not isinstance(timeout_us, int) or timeout_us < 1:
        raise BadRequest("parameters.timeout must be a positive integer of microseconds")
    return service.deadline(target, timeout_us / 1000)


async def _run(service: InferenceService, target: ModelVersion, request: InferRequest, deadline: float) -> np.ndarray:
    if len(request.inputs) != 1:
        names = [i.name for i in request.inputs]
        raise BadRequest(f"send one input, {IMAGE_INPUT!r} or {target.config.input.name!r}; got {names}")
    tensor = request.inputs[0]
    if tensor.name == IMAGE_INPUT:
        outputs = await service.infer_images(target, _images(tensor), deadline)
    elif tensor.name == target.config.input.name:
        if tensor.datatype != "FP32" or tensor.array is None:
            raise BadRequest(f"input {tensor.name!r} must be FP32, not {tensor.datatype}")
        outputs = await service.infer_tensors(target, tensor.array, deadline)
    else:
        raise BadRequest(
            f"unknown input {tensor.name!r}; model {target.name!r} takes {IMAGE_INPUT!r} (BYTES, encoded images) "
            f"or {target.config.input.name!r} (FP32 {[-1, *target.config.input.shape]})"
        )
    return np.stack(outputs)


def _classes(probs: np.ndarray, k: int, labels: list[str] | None) -> list[bytes]:
    out = []
    for row in probs:
        for p in top_k(row, k, labels):
            label = f":{p.label}" if labels else ""
            out.append(f"{p.score:f}:{p.class_id}{label}".encode())
    return out


def _outputs(target: ModelVersion, request: InferRequest, probs: np.ndarray) -> list[OutputTensor]:
    wanted = request.outputs or [RequestedOutput(PROBABILITIES)]
    result = []
    for want in wanted:
        binary = request.binary_output if want.binary is None else want.binary
        if want.name not in (PROBABILITIES, CLASSIFICATION):
            raise BadRequest(f"unknown output {want.name!r}; outputs: {[PROBABILITIES, CLASSIFICATION]}")
        k = want.classification or (DEFAULT_CLASSES if want.name == CLASSIFICATION else None)
        if k is None:
            result.append(OutputTensor(want.name, "FP32", list(probs.shape), array=probs, binary=binary))
        else:
            k = min(k, probs.shape[1])
            elements = _classes(probs, k, target.labels)
            result.append(OutputTensor(want.name, "BYTES", [len(probs), k], elements=elements, binary=binary))
    return result


async def _run_tensor_model(
    service: InferenceService, target: ModelVersion, request: InferRequest, deadline: float
) -> list[OutputTensor]:
    feeds = {}
    for tensor in request.inputs:
        if tensor.array is None:
            raise BadRequest(f"input {tensor.name!r}: BYTES inputs are not served for tensor models")
        if tensor.name in feeds:
            raise BadRequest(f"input {tensor.name!r} is given twice")
        feeds[tensor.name] = tensor.array
    outputs = await service.infer_feeds(target, feeds, deadline)
    wanted = request.outputs or [RequestedOutput(n) for n in outputs]
    result = []
    for want in wanted:
        if want.name not in outputs:
            raise BadRequest(f"unknown output {want.name!r}; model {target.name!r} has {sorted(outputs)}")
        if want.classification is not None:
            raise BadRequest("parameters.classification applies to image models only")
        array = outputs[want.name]
        binary = request.binary_output if want.binary is None else want.binary
        result.append(
            OutputTensor(want.name, _v2_type(array.dtype.name), list(array.shape), array=array, binary=binary)
        )
    return result


async def _outputs_for(
    service: InferenceService, target: ModelVersion, request: InferRequest, deadline: float
) -> list[OutputTensor]:
    if target.config.kind == "tensor":
        return await _run_tensor_model(service, target, request, deadline)
    return _outputs(target, request, await _run(service, target, request, deadline))


_USE_BINARY = (
    "Large tensors go in the binary tensor extension (Inference-Header-Content-Length; tritonclient: "
    "set_data_from_numpy(..., binary_data=True)), where a float32 takes 4 bytes instead of up to 20 in JSON"
)


async def _infer(request: Request, service: InferenceService, name: str, version: str | None) -> Response:
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
    return await _infer(request, service, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on a version",
    responses={200: {"description": "Outputs, as JSON or JSON plus binary"}, **_INFER},
    openapi_extra=_INFER_BODY,
)
async def infer_version(
    request: Request, name: ModelName, version: VersionPath, service: Service, _: ApiKey
) -> Response:
    return await _infer(request, service, name, version)
