"""The KServe v2 / Open Inference Protocol over HTTP, as Triton speaks it: server and model
metadata, readiness, Triton's model configuration and statistics extensions (``inference.py``:
``infer``). tritonclient works as is. Inputs and outputs are the model kind's
(``pdserve/kinds``); this module only writes them in v2's and Triton's shapes.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from pdserve.api.deps import Service
from pdserve.api.health import readiness
from pdserve.api.v2.tensors import DATATYPES
from pdserve.errors import BadRequest, ModelNotFound
from pdserve.service import BYTES, InferenceService, ModelEntry, ModelVersion, TensorSpec
from pdserve.stats import Duration, VersionStats

router = APIRouter(prefix="/v2", tags=["v2 (KServe / Open Inference Protocol)"])
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


def v2_type(dtype: str) -> str:
    if dtype in (BYTES, "object"):
        return "BYTES"
    return next(k for k, v in DATATYPES.items() if v == np.dtype(dtype))


def _io(service: InferenceService, target: ModelVersion | None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The version's inputs and outputs as its kind declares them (-1: any size); none before it loads."""
    if target is None:
        return [], []
    return service.inputs(target), service.outputs(target)


def _doc(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": v2_type(spec.dtype), "shape": list(spec.shape)}


def _config_doc(spec: TensorSpec) -> dict[str, Any]:
    """Triton's model config: with max_batch_size > 0, dims leave out the batch dimension."""
    dims = list(spec.shape[1:]) if spec.shape[:1] == (-1,) else list(spec.shape)
    return {"name": spec.name, "data_type": "TYPE_" + ("STRING" if spec.dtype == BYTES else v2_type(spec.dtype)),
            "dims": dims or [1]}  # fmt: skip


def _metadata(service: InferenceService, name: str, version: str | None) -> dict[str, Any]:
    entry = _entry(service, name)
    config = entry.config
    if config is None:
        raise ModelNotFound(f"model {name!r} could not be read: {entry.error}")
    v = _version(version)
    if v is not None and v not in entry.versions:
        raise ModelNotFound(f"model {name!r} has no version {v}")
    target = entry.versions[v] if v is not None else entry.latest
    inputs, outputs = _io(service, target)
    return {
        "name": name,
        "versions": [str(x) for x in sorted(entry.versions)],
        "platform": PLATFORM,
        "inputs": [_doc(s) for s in inputs],
        "outputs": [_doc(s) for s in outputs],
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
    inputs, outputs = _io(service, entry.latest)
    config_inputs = [_config_doc(s) for s in inputs]
    config_outputs = [_config_doc(s) for s in outputs]
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
                stats.append(triton_stats(mv.stats, entry.name, number))
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


def triton_stats(stats: VersionStats, name: str, version: int) -> dict[str, Any]:
    """A version's statistics in the shape of Triton's statistics extension."""
    zero = Duration().as_dict()
    return {
        "name": name,
        "version": str(version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": stats.success.as_dict(),
            "fail": stats.fail.as_dict(),
            "queue": stats.queue.as_dict(),
            "compute_input": zero,
            "compute_infer": stats.compute_infer.as_dict(),
            "compute_output": zero,
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [
            {"batch_size": size, "compute_input": zero, "compute_infer": d.as_dict(), "compute_output": zero}
            for size, d in sorted(stats.batch_sizes.items())
        ],
    }
