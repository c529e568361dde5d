"""Dependency aliases that keep route signatures short."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pdserve.metrics import Metrics
from pdserve.service import InferenceService


def _service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


def _metrics(request: Request) -> Metrics:
    return _service(request).metrics


Service = Annotated[InferenceService, Depends(_service)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
