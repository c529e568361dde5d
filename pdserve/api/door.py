"""The front door: an inference request that admission would refuse is refused here, before
routing, FastAPI's dependencies and the body.

Under overload most requests are refusals, and on a machine whose cores also run the model every
microsecond a refusal costs is taken from inference. Through FastAPI's stack a 429 cost about a
millisecond of CPU (``benchmarks/null_model.py``); here it costs a path match, a few header reads
and the bounds the route itself would check first: the process's requests in flight and the
model's queue (``Overloaded``, the same message, reason, ``Retry-After`` and metrics). Anything
else (another route, an unknown model, a wrong API key or media type, a draining server) goes
on to the app, which answers as before: the door only ever answers 429.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from pdserve.api.accounting import count_refusal
from pdserve.api.auth import api_key_matches
from pdserve.api.errors import error_response
from pdserve.api.inputs import ACCEPTED_TYPES
from pdserve.errors import Overloaded, PdserveError
from pdserve.service import InferenceService, ModelVersion


def _version(text: str) -> int:
    if not text.isdigit() or text[0] == "0":
        raise ValueError(text)  # not a version: the route will say why
    return int(text)


def inference_target(path: str, query: bytes) -> tuple[str | None, int | None, bool] | None:
    """(model, version, v2) named by an inference route's path and query, or None for any other path
    and for names or versions the route itself must judge."""
    version: int | None = None
    model: str | None
    try:
        if path == "/predict" or (path.startswith("/models/") and path.endswith("/predict")):
            args = parse_qs(query.decode("latin-1")) if query else {}
            if "version" in args:
                version = _version(args["version"][-1])
            if path == "/predict":
                model = args["model"][-1] if "model" in args else None
            else:
                model = path[len("/models/") : -len("/predict")]
            v2 = False
        elif path.startswith("/v2/models/") and path.endswith("/infer"):
            model, _, rest = path[len("/v2/models/") : -len("/infer")].partition("/versions/")
            if rest:
                version = _version(rest)
            v2 = True
        else:
            return None
    except ValueError:
        return None
    if model is not None and (not model or "/" in model):
        return None
    return model, version, v2


class FrontDoor:
    """ASGI layer between the request ids and the app (``factory.PdserveApp``)."""

    def __init__(self, app: ASGIApp, service: InferenceService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            refusal = self._refusal(scope)
            if refusal is not None:
                exc, target = refusal
                count_refusal(self.service, target, exc)
                response = error_response(scope["path"], exc.status_code, exc.code, exc.message, exc.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[Overloaded, ModelVersion] | None:
        where = inference_target(scope["path"], scope["query_string"])
        if where is None:
            return None
        model, version, v2 = where
        service = self.service
        if not service.lifecycle.ready:
            return None  # draining or refusing: the route says so
        authorization = content_type = ""
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"content-type":
                content_type = value.decode("latin-1")
        if not api_key_matches(service.settings, authorization):
            return None  # 401 first, as the route answers
        if not v2 and content_type.split(";")[0].strip().lower() not in ACCEPTED_TYPES:
            return None  # 415 first
        try:
            target = service.resolve(model, version)
        except PdserveError:
            return None  # 404 or 503: the route's answer
        try:
            service.limits.check()
            service.check_room(target)
        except Overloaded as exc:
            return exc, target
        return None
