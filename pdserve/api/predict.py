"""``POST /predict`` and ``POST /models/{name}/predict``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse

from pdserve.api.accounting import Accounted, unless_disconnected
from pdserve.api.auth import ApiKey
from pdserve.api.deps import Service
from pdserve.api.inputs import BodyLimits, check_media_type, read_images
from pdserve.api.schemas import (
    BatchPredictResponse,
    DetectResponse,
    ErrorResponse,
    PredictResponse,
)
from pdserve.service import InferenceService, ModelVersion

router = APIRouter(tags=["inference"])

ModelQuery = Annotated[str | None, Query(description="Model name; optional when one model or a default is set.")]
VersionQuery = Annotated[int | None, Query(ge=1, description="Model version; default: the newest loaded.")]
TOP_K_LEAST, TOP_K_MOST, TOP_K_DEFAULT = 1, 1000, 5
TopK = Annotated[
    int, Query(ge=TOP_K_LEAST, le=TOP_K_MOST, description="Classifiers: how many classes to return, best first.")
]
ScoreThreshold = Annotated[
    float | None,
    Query(
        ge=0,
        le=1,
        description="Detectors: the lowest score of a box returned; default: the model's "
        "detection.score_threshold (draw_threshold of its infer_cfg.yml).",
    ),
]
Answer = PredictResponse | DetectResponse | BatchPredictResponse
TimeoutHeader = Annotated[
    int | None,
    Header(
        alias="X-Request-Timeout-Ms",
        ge=1,
        description="Deadline of this request in milliseconds (clamped to PDSERVE_MAX_REQUEST_TIMEOUT_S); "
        "default: the model's timeout_ms. Past it: 504, and the request's images are never run.",
    ),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Undecodable image, or malformed multipart, JSON or base64 (bad_request, invalid_image)",
        401: "A missing or wrong 'Authorization: Bearer' key, when PDSERVE_API_KEY is set (unauthorized)",
        404: "Unknown model or version (model_not_found)",
        408: "The body did not arrive within PDSERVE_BODY_TIMEOUT_S (body_timeout)",
        413: "Body over PDSERVE_MAX_BODY_BYTES (payload_too_large), an image over PDSERVE_MAX_IMAGE_PIXELS "
        "(image_too_large), or more than PDSERVE_MAX_IMAGES_PER_REQUEST images (too_many_images)",
        415: "Unsupported media type (unsupported_media_type)",
        422: "A bad query parameter or header, e.g. top_k=0 (validation_error)",
        429: "Refused at admission: the model's queue is full, the estimated wait exceeds the deadline, or the "
        "server has too many requests or body bytes in flight (overloaded); retry after Retry-After seconds",
        500: "A bug (internal_error)",
        503: "Retryable: model loading or recovering (model_not_ready), its worker died or hung running this "
        "batch (worker_died, worker_hung), or the server is shutting down (shutting_down), with Retry-After; "
        "not retryable: the model failed for good (model_unavailable), without Retry-After",
        504: "No result within the request's deadline (timeout)",
    }.items()
}
for _code in (429, 503):
    _ERRORS[_code]["headers"] = {
        "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
    }

# A real 2x2 PNG: examples in the OpenAPI document are sent by tools as they are.
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8ISfHwMDAxMDAwMDAAAANBAEIfXHKZgAAAABJRU5ErkJggg=="
)
_IMAGE_B64 = {"type": "string", "format": "byte", "description": "An encoded image (JPEG, PNG, WebP, BMP) in base64"}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                            "description": "One part per image; repeat the field for several",
                        }
                    },
                    "required": ["file"],
                    "additionalProperties": False,
                },
            },
            **{
                kind: {"schema": {"type": "string", "format": "binary"}}
                for kind in ("image/jpeg", "image/png", "image/webp", "image/bmp", "application/octet-stream")
            },
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "object", "properties": {"image": _IMAGE_B64}, "required": ["image"]},
                        {
                            "type": "object",
                            "properties": {"images": {"type": "array", "items": _IMAGE_B64, "minItems": 1}},
                            "required": ["images"],
                        },
                    ]
                },
                "example": {"image": EXAMPLE_PNG_BASE64},
            },
        },
    }
}


def _response(target: ModelVersion, results: list[dict[str, Any]], many: bool) -> JSONResponse:
    """The kind's JSON per image (classes for the image kind: ``PredictResponse``), sent as it is:
    a new kind's answer needs no schema here to be served."""
    if many:
        return JSONResponse({"model": target.name, "version": target.version, "results": results})
    return JSONResponse({"model": target.name, "version": target.version, **results[0]})


async def predict_response(
    request: Request,
    service: InferenceService,
    model: str | None,
    version: int | None,
    params: dict[str, Any],
    timeout_ms: int | None,
) -> JSONResponse:
    """The answer to a REST predict request (the routes below, and the front door's direct path)."""
    settings = service.settings
    with Accounted(service) as accounted:
        service.lifecycle.check_accepting()
        target = service.resolve(model, version)
        deadline = service.deadline(target, timeout_ms)
        accounted.enter(target)
        check_media_type(request)
        service.check_room(target)  # a full model refuses before the body is read
        limits = BodyLimits(settings.max_body_bytes, settings.body_timeout_s, settings.max_images_per_request)
        images, many = await read_images(request, limits, service.limits)
        results = await unless_disconnected(request, service.predict(target, images, params, deadline))
        return _response(target, results, many)


@router.post(
    "/predict",
    response_model=Answer,
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Classify, or detect objects in, one or several images",
)
async def predict(
    request: Request,
    service: Service,
    _: ApiKey,
    model: ModelQuery = None,
    version: VersionQuery = None,
    top_k: TopK = TOP_K_DEFAULT,
    score_threshold: ScoreThreshold = None,
    timeout_ms: TimeoutHeader = None,
) -> JSONResponse:
    """Post an image as multipart ``file`` (repeat it for several), as the raw body, or as
    ``{"image": "<base64>"}``; get the ``top_k`` classes, best first (classifiers), or the boxes
    scoring at least ``score_threshold``, best first, in the image's pixels (detectors)."""
    params = {"top_k": top_k, "score_threshold": score_threshold}
    return await predict_response(request, service, model, version, params, timeout_ms)


@router.post(
    "/models/{name}/predict",
    response_model=Answer,
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Classify or detect with a named model",
)
async def predict_model(
    request: Request,
    service: Service,
    _: ApiKey,
    name: Annotated[str, Path(description="Model name")],
    version: VersionQuery = None,
    top_k: TopK = TOP_K_DEFAULT,
    score_threshold: ScoreThreshold = None,
    timeout_ms: TimeoutHeader = None,
) -> JSONResponse:
    """Same as ``POST /predict?model=<name>``."""
    params = {"top_k": top_k, "score_threshold": score_threshold}
    return await predict_response(request, service, name, version, params, timeout_ms)
