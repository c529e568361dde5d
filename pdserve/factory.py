"""The app factory: settings in, a FastAPI app out. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from pdserve.api import health, models, paddlex, predict
from pdserve.api.door import FrontDoor
from pdserve.api.errors import register_error_handlers
from pdserve.api.openapi import install_openapi
from pdserve.api.v2 import inference as v2_inference
from pdserve.api.v2 import metadata as v2_metadata
from pdserve.api.v2 import repository as v2_repository
from pdserve.gpu_metrics import GpuMonitor
from pdserve.metrics import Metrics
from pdserve.repository import ModelRepository, Overrides
from pdserve.request_log import RequestIds
from pdserve.runtime.process import WorkerOptions
from pdserve.service import InferenceService
from pdserve.settings import Settings


def _version() -> str:
    try:
        return version("pdserve")
    except PackageNotFoundError:
        return "0.0.0"


class PdserveApp(FastAPI):
    """FastAPI with two plain ASGI layers outside all of it: the request id and access line
    (outermost, so it sees every answer, the 500s of FastAPI's last-resort handler included), then
    the front door, which refuses overloaded inference requests before FastAPI's own layers,
    routing and dependencies run (``api/door.py``)."""

    _outer: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._outer is None:
            service: InferenceService = self.state.service
            self._outer = RequestIds(FrontDoor(super().__call__, service, self))
        await self._outer(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """Build the app. Model configs are read now (a repository with no model folder refuses to
    start); models load in the background once the server runs, so ``/healthz`` answers at once
    and ``/readyz`` says what is still loading."""
    metrics = Metrics(gpus=GpuMonitor())
    overrides = Overrides.from_settings(settings)
    workers = WorkerOptions(settings.worker_start_timeout_s, settings.worker_nice, settings.worker_idle_spin_ms)
    repository = ModelRepository(settings.model_repo, metrics, workers, overrides)
    repository.scan(settings.default_model)
    service = InferenceService(repository, settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(repository.load_all())
        polling = None
        if settings.repository_poll_s > 0:
            polling = asyncio.create_task(repository.poll(settings.repository_poll_s))
        try:
            yield
        finally:
            # uvicorn has already finished in-flight requests (graceful shutdown) when we get here.
            if polling is not None:
                polling.cancel()
            await asyncio.gather(loading, *([polling] if polling else []), return_exceptions=True)
            await repository.unload_all()
            service.close()

    app = PdserveApp(
        title="pdserve",
        version=_version(),
        summary="HTTP inference for PaddlePaddle image models, with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.service = service
    register_error_handlers(app)
    install_openapi(app)
    for module in (predict, models, health, v2_repository, v2_metadata, v2_inference, paddlex):
        app.include_router(module.router)
    return app
