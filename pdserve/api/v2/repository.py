"""Triton's model repository extension: index, load and unload, behind the admin key.

A load re-reads the model's folder: new versions appear, removed ones go, a changed config or
changed files apply, all without interrupting traffic (``ModelRepository.load_model``). An unload
answers what the model holds, then frees it. A load that fails leaves what serves untouched and
says why (400).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from pdserve.api.auth import Admin
from pdserve.api.deps import Service
from pdserve.api.v2.metadata import V2Error
from pdserve.errors import BadRequest, ModelLoadError
from pdserve.service import InferenceService, ModelState

router = APIRouter(prefix="/v2/repository", tags=["v2 repository (management)"])
ModelName = Annotated[str, Path(description="Model name: a folder of the repository")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V2Error, "description": text}
    for code, text in {
        400: "The model could not be loaded; what served before still serves",
        401: "A missing or wrong 'Authorization: Bearer <admin key>'",
        403: "The management API is disabled: no admin key is configured",
        404: "No such model folder, or (unload) the model is not loaded",
        422: "A parameter of the wrong form",
    }.items()
}


def index_rows(service: InferenceService) -> list[dict[str, str]]:
    """Triton's index: a row per version of every model folder, loaded or not."""
    rows = []
    for name, entry in service.catalog():
        if entry is None:
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"})
            continue
        if not entry.versions:
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": entry.error or ""})
        for number, v in sorted(entry.versions.items()):
            state = "READY" if v.serving else ("LOADING" if v.state is ModelState.LOADING else "UNAVAILABLE")
            rows.append({"name": name, "version": str(number), "state": state, "reason": v.error or ""})
    return rows


@router.post("/index", summary="Every model folder, loaded or not, with versions and states", responses=_ERRORS)
async def index(service: Service, _: Admin) -> list[dict[str, str]]:
    return index_rows(service)


@router.post("/models/{name}/load", summary="Load or reload a model without downtime", responses=_ERRORS)
async def load(name: ModelName, service: Service, _: Admin) -> JSONResponse:
    try:
        await service.load_model(name)
    except ModelLoadError as exc:
        raise BadRequest(f"failed to load {name!r}: {exc.message}") from None
    return JSONResponse({})


@router.post("/models/{name}/unload", summary="Answer what the model holds, then unload it", responses=_ERRORS)
async def unload(name: ModelName, service: Service, _: Admin) -> JSONResponse:
    await service.unload_model(name)
    return JSONResponse({})
