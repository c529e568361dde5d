"""PaddleX 3's serving protocol for the OCR pipeline: ``POST /ocr``, so PaddleX clients work unchanged.

Request (``application/json``): ``file`` (the image, base64), ``fileType`` (1 or null: an image;
0, a PDF, is refused), and PaddleX's optional settings, at the top level or under
``inferenceParams``. Response: ``{"logId", "errorCode": 0, "errorMsg": "Success", "result":
{"ocrResults": [{"prunedResult", "ocrImage", ...}], "dataInfo"}}``, where ``prunedResult`` holds
PaddleX's OCR result fields (``rec_texts``, ``rec_scores``, ``rec_polys``, ``rec_boxes``,
``dt_polys``, ...). Errors keep PaddleX's shape too: ``{"logId", "errorCode", "errorMsg"}`` with
the HTTP status as the code. The work is the same as ``/predict?model=<the ocr model>``: the same
admission, deadline, batching and stage models.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Annotated, Any

import cv2
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from pdserve.api.accounting import Accounted, unless_disconnected
from pdserve.api.auth import ApiKey
from pdserve.api.deps import Service
from pdserve.api.inputs import BodyLimits, read_body
from pdserve.errors import BadRequest, ModelNotFound, PdserveError
from pdserve.service import InferenceService

router = APIRouter(tags=["PaddleX serving"])
DEFAULT_OCR_MODEL = "ppocr_v4"
# PaddleX's per-request settings and the config.yaml field each one would have to match here.
_SETTINGS = {
    "textDetLimitSideLen": "det_limit_side_len",
    "textDetLimitType": "det_limit_type",
    "textDetThresh": "det_db_thresh",
    "textDetBoxThresh": "det_db_box_thresh",
    "textDetUnclipRatio": "det_db_unclip_ratio",
}
_IGNORED_FALSE = ("useDocOrientationClassify", "useDocUnwarping")  # pipeline steps pdserve has not got


def _failure(exc: PdserveError) -> JSONResponse:
    body = {"logId": uuid.uuid4().hex, "errorCode": exc.status_code, "errorMsg": exc.message}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _request(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("file"), str):
        raise BadRequest('send {"file": "<base64 image>", "fileType": 1}')
    if doc.get("fileType") not in (None, 1):
        raise BadRequest("fileType 0 (PDF) is not served; send an image (fileType 1)")
    params = {**(doc.get("inferenceParams") or {}), **doc}
    for name in _IGNORED_FALSE:
        if params.get(name):
            raise BadRequest(f"{name} is not served by pdserve's OCR pipeline; leave it out or false")
    return params


def _image(file: str) -> bytes:
    if file.startswith(("http://", "https://")):
        raise BadRequest("file URLs are not fetched; send the image itself, base64-encoded")
    try:
        return base64.b64decode(file, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("file must be a base64-encoded image") from None


def _check_settings(params: dict[str, Any], configured: dict[str, Any]) -> None:
    for name, field in _SETTINGS.items():
        given = params.get(name)
        if given is not None and given != configured.get(field):
            raise BadRequest(
                f"{name}={given!r} differs from the model's ocr.{field} ({configured.get(field)!r}); "
                "pdserve batches every request alike: set it in the model's config.yaml"
            )


def _overlay(image: bytes, lines: list[dict[str, Any]]) -> str:
    """PaddleX's ocrImage: the input with each line's polygon drawn, JPEG in base64."""
    bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return ""
    for line in lines:
        cv2.polylines(bgr, [np.array(line["box"], np.int32)], True, (0, 0, 255), 2)
    ok, jpeg = cv2.imencode(".jpg", bgr)
    return base64.b64encode(jpeg.tobytes()).decode() if ok else ""


def _pruned(result: dict[str, Any], configured: dict[str, Any], threshold: float) -> dict[str, Any]:
    lines = result["lines"]
    polys = [line["box"] for line in lines]
    boxes = [[min(p[0] for p in b), min(p[1] for p in b), max(p[0] for p in b), max(p[1] for p in b)] for b in polys]
    return {
        "model_settings": {"use_doc_preprocessor": False, "use_textline_orientation": True},
        "dt_polys": polys,
        "text_det_params": {
            "limit_side_len": configured.get("det_limit_side_len"),
            "limit_type": configured.get("det_limit_type"),
            "thresh": configured.get("det_db_thresh"),
            "box_thresh": configured.get("det_db_box_thresh"),
            "unclip_ratio": configured.get("det_db_unclip_ratio"),
        },
        "text_type": "general",
        "textline_orientation_angles": [1 if line.get("angle") == 180 else 0 for line in lines],
        "text_rec_score_thresh": threshold,
        "rec_texts": [line["text"] for line in lines],
        "rec_scores": [line["score"] for line in lines],
        "rec_polys": polys,
        "rec_boxes": boxes,
    }


async def _ocr(request: Request, service: InferenceService, model: str) -> JSONResponse:
    settings = service.settings
    with Accounted(service) as accounted:
        service.lifecycle.check_accepting()
        target = service.resolve(model, None)
        deadline = service.deadline(target, None)
        kind = service.kind_of(target)
        if kind != "ocr":
            raise ModelNotFound(f"no OCR model {target.name!r}: it is kind {kind}; ?model=<a kind ocr model>")
        accounted.enter(target)
        service.check_room(target)
        limits = BodyLimits(settings.max_body_bytes, settings.body_timeout_s, 1)
        params = _request(await read_body(request, limits, service.limits))
        image = _image(params["file"])
        if service.kind_of(target) != "ocr":
            raise ModelNotFound(
                f"no OCR model {target.name!r}: it is kind {service.kind_of(target)}; ?model=<a kind ocr model>"
            )
        configured = service.kind_settings(target)
        _check_settings(params, configured)
        threshold = params.get("textRecScoreThresh")
        threshold = float(threshold if threshold is not None else configured.get("drop_score", 0.0))
        (result,) = await unless_disconnected(
            request, service.predict(target, [image], {"score_threshold": threshold}, deadline)
        )
        ocr_result = {
            "prunedResult": _pruned(result, configured, threshold),
            "ocrImage": _overlay(image, result["lines"]) if params.get("visualize", True) is not False else None,
            "docPreprocessingImage": None,
            "inputImage": None,
        }
        data_info = {"width": result["width"], "height": result["height"], "type": "image"}
        body = {"ocrResults": [ocr_result], "dataInfo": data_info}
        return JSONResponse({"logId": uuid.uuid4().hex, "errorCode": 0, "errorMsg": "Success", "result": body})


class PaddleXError(BaseModel):
    logId: str
    errorCode: int = Field(examples=[400], description="The HTTP status")
    errorMsg: str


_FAILURES = {
    400: "Not JSON, no base64 file, fileType 0 (PDF), a file URL, a document-preprocessing switch, a detection "
    "setting that differs from the model's config, or an image that cannot be decoded",
    401: "A missing or wrong 'Authorization: Bearer' key, when PDSERVE_API_KEY is set",
    404: "No such model, or it is not an OCR model (kind ocr)",
    408: "The body did not arrive in time",
    413: "Body or image over its limit",
    422: "A bad query parameter",
    429: "Refused at admission (overloaded); retry after Retry-After seconds",
    500: "A bug",
    503: "The model is not ready, its worker died or hung, or the server is shutting down",
    504: "No result within the request's deadline",
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "description": "The image, base64-encoded"},
                        "fileType": {"type": "integer", "enum": [0, 1], "nullable": True},
                        "textRecScoreThresh": {"type": "number"},
                        "visualize": {"type": "boolean", "nullable": True},
                    },
                }
            }
        },
    }
}


@router.post(
    "/ocr",
    summary="PaddleX 3's OCR serving endpoint (PaddleX clients work unchanged)",
    responses={
        200: {"description": "PaddleX's response: logId, errorCode 0, errorMsg, result.ocrResults"},
        **{code: {"model": PaddleXError, "description": text} for code, text in _FAILURES.items()},
    },
    openapi_extra=_BODY,
)
async def ocr(
    request: Request,
    service: Service,
    _: ApiKey,
    model: Annotated[str, Query(description="The kind ocr model to run")] = DEFAULT_OCR_MODEL,
) -> JSONResponse:
    try:
        return await _ocr(request, service, model)
    except PdserveError as exc:
        return _failure(exc)
