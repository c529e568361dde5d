"""``GET /models`` and ``GET /models/{name}``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from pdserve.api.deps import Service
from pdserve.api.schemas import (
    ErrorResponse,
    InputInfo,
    InstanceInfo,
    ModelInfo,
    ModelList,
    ModelReadiness,
    VersionInfo,
)
from pdserve.errors import ModelNotFound
from pdserve.service import ModelEntry

router = APIRouter(tags=["models"])


def model_info(entry: ModelEntry) -> ModelInfo:
    versions = [
        VersionInfo(
            version=v.version,
            state=v.state.value,
            error=v.error,
            instances=[InstanceInfo(**i) for i in v.instances()],
            compute_timeout_ms=v.compute_timeout_s * 1000 if v.compute_timeout_s else None,
            program=program[0] if (program := v.program) else None,
            format=program[1] if program else None,
        )
        for v in sorted(entry.versions.values(), key=lambda v: v.version)
    ]
    info = ModelInfo(name=entry.name, state=entry.state.value, error=entry.reason, versions=versions)
    c = entry.config
    if c is None:
        return info
    return info.model_copy(
        update={
            "description": c.description,
            "precision": c.precision,
            "device": c.device,
            "instances": c.instances,
            "cpu_threads": c.cpu_threads,
            "max_batch_size": c.max_batch_size,
            "max_queue_delay_ms": c.max_queue_delay_ms,
            "batch_sizes": list(c.padded_batch_sizes),
            "max_queue_size": c.max_queue_size,
            "timeout_ms": c.timeout_ms,
            "compute_timeout_ms": c.compute_timeout_ms,
            "required": c.required,
            "kind": c.kind,
            "input": InputInfo(name=c.input.name, shape=list(c.input.shape), dtype=c.input.dtype)
            if c.kind == "image"
            else None,
            "random_weights": c.random_weights,
        }
    )


@router.get("/models", response_model=ModelList, summary="Every model in the repository and its state")
async def list_models(service: Service) -> ModelList:
    return ModelList(models=[model_info(e) for e in service.models()])


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    responses={404: {"model": ErrorResponse}},
    summary="One model: versions, state, worker processes, batching settings",
)
async def get_model(name: str, service: Service) -> ModelInfo:
    entry = service.find_model(name)
    if entry is None:
        raise ModelNotFound(f"no model {name!r}; available: {service.model_names()}")
    return model_info(entry)


@router.get(
    "/models/{name}/ready",
    response_model=ModelReadiness,
    responses={
        404: {"model": ErrorResponse, "description": "Unknown model"},
        503: {"model": ModelReadiness, "description": "No instance of the model serves"},
    },
    summary="200 when at least one instance of the model serves",
)
async def model_ready(name: str, service: Service) -> JSONResponse:
    entry = service.find_model(name)
    if entry is None:
        raise ModelNotFound(f"no model {name!r}; available: {service.model_names()}")
    body = ModelReadiness(name=name, ready=entry.serving, state=entry.state.value, reason=entry.reason)
    return JSONResponse(body.model_dump(), status_code=200 if entry.serving else 503)
