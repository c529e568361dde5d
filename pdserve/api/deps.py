"""Dependency aliases that keep route signatures short.

Every dependency is ``async def``: FastAPI runs a plain ``def`` one in a thread pool, a thread
handoff on every request (measured: ~8% of the HTTP process's CPU with a null model,
``benchmarks/null_model.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pdserve.metrics import Metrics
from pdserve.service import InferenceService


async def _service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


async def _metrics(request: Request) -> Metrics:
    service: InferenceService = request.app.state.service
    return service.metrics


Service = Annotated[InferenceService, Depends(_service)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
