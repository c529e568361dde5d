"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pdserve.api.auth import redact
from pdserve.api.deps import MetricsDep, Service
from pdserve.api.schemas import Health, Readiness
from pdserve.service import InferenceService, ModelState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


def readiness(service: InferenceService) -> Readiness:
    """Ready when the server is not draining and every required model has an instance serving
    (``strict_readiness``), or any model serves (not strict). Models that are down but not needed
    for readiness, or degraded, are reported in ``degraded`` and do not turn the pod unready."""
    strict = service.settings.strict_readiness
    models: dict[str, str] = {}
    reasons: list[str] = []
    degraded: list[str] = []
    entries = {e.name: e for e in service.models()}
    for name, entry in entries.items():
        state = entry.state
        models[name] = state.value
        if state is ModelState.READY:
            continue
        detail = entry.reason
        line = f"model {name!r} is {state.value}" + (f": {detail}" if detail else "")
        blocking = strict and entry.required and not entry.serving
        (reasons if blocking else degraded).append(line)
    if not strict and not any(e.serving for e in entries.values()):
        reasons.append("no model is serving")
    if not service.lifecycle.ready:
        reasons.insert(0, "server is shutting down")
    return Readiness(ready=not reasons, models=models, reasons=reasons, degraded=degraded)


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Draining, or a required model is not serving"}},
    summary="200 when every required model has an instance serving and the server is not draining",
)
async def readyz(request: Request, service: Service) -> JSONResponse:
    body = readiness(service)
    body.reasons = [redact(r, request) for r in body.reasons]
    body.degraded = [redact(r, request) for r in body.degraded]
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
