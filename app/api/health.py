"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import MetricsDep, Service
from app.api.schemas import Health, Readiness
from app.repository import ModelState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Some model is not loaded and warmed"}},
    summary="200 only when every configured model is loaded and warmed",
)
async def readyz(service: Service) -> JSONResponse:
    models, reasons = {}, []
    for name, entry in service.repository.models.items():
        state = entry.state
        models[name] = state.value
        if state is not ModelState.READY:
            detail = entry.error or next((v.error for v in entry.versions.values() if v.error), None)
            reasons.append(f"model {name!r} is {state.value}" + (f": {detail}" if detail else ""))
    body = Readiness(ready=not reasons, models=models, reasons=reasons)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
