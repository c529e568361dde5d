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

from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope, Send

from pdserve.api.accounting import count_refusal
from pdserve.api.auth import api_key_matches
from pdserve.api.errors import error_body
from pdserve.api.inputs import ACCEPTED_TYPES
from pdserve.errors import Overloaded, PdserveError
from pdserve.service import InferenceService, ModelVersion


def _query_value(query: bytes, key: bytes) -> str | None:
    """The last value of ``key`` in a query string, as ``parse_qs`` reads it; much cheaper when absent."""
    if key not in query:
        return None
    found = None
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == key:
            found = value
    if found is None:
        return None
    text = found.decode("latin-1")
    return unquote_plus(text, encoding="utf-8") if b"%" in found or b"+" in found else text


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
            given = _query_value(query, b"version")
            if given is not None:
                version = _version(given)
            model = _query_value(query, b"model") if path == "/predict" else path[len("/models/") : -len("/predict")]
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


async def _answer(send: Send, body: bytes, extra: dict[str, str]) -> None:
    """A 429 as plain ASGI messages: what ``JSONResponse`` sends, without building one."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
                await _answer(send, error_body(scope["path"], exc.code, exc.message), exc.headers)
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
