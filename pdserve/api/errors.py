"""Errors, the framework's own included, in each protocol's one shape, decided here and only here.

REST: ``{"error": {"code": ..., "message": ...}}``. KServe v2 (paths under ``/v2``):
``{"error": "<message>"}``, as tritonclient reads it. The status code and headers are the same.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdserve.api.auth import redact
from pdserve.errors import PdserveError
from pdserve.request_log import current_id

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


V2_PREFIX = "/v2"


def _error_doc(path: str, code: str, message: str) -> dict[str, Any]:
    request_id = current_id()  # also in the X-Request-ID header; in the body for clients that log bodies
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        return {"error": message, "request_id": request_id}
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def error_response(
    path: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(_error_doc(path, code, message), status_code=status, headers=headers)


def error_body(path: str, code: str, message: str) -> bytes:
    """The error document as ``error_response`` renders it."""
    return json.dumps(_error_doc(path, code, message), ensure_ascii=False, separators=(",", ":")).encode()


async def pdserve_error(request: Request, exc: Exception) -> JSONResponse:
    """A ``PdserveError``'s answer, in its protocol's shape (the app's handler; the front door's too)."""
    assert isinstance(exc, PdserveError)
    return error_response(request.url.path, exc.status_code, exc.code, redact(exc.message, request), exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(request.url.path, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return error_response(request.url.path, 422, "validation_error", "; ".join(parts))


class CatchAll:
    """Turn an unexpected exception into a 500 in the error shape, and keep the connection.

    Starlette's own last-resort handler re-raises after answering, and uvicorn then closes the
    keep-alive connection under the client's next request; this middleware sits inside it and
    does not re-raise.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise  # half a response is out; only closing the connection can tell the client
            response = error_response(scope.get("path", ""), 500, "internal_error", "internal server error")
            await response(scope, receive, send)


def register_error_handlers(app: FastAPI) -> None:
    # Handlers are looked up along the exception's class hierarchy: one per family suffices.
    app.add_exception_handler(PdserveError, pdserve_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(CatchAll)  # RequestIds and the front door go around FastAPI's own layers (factory)
