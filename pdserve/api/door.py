"""The front door: an inference request that admission would refuse is refused here, before
routing, FastAPI's dependencies and the body; and an inference request that passes goes straight to
its route's handler, without FastAPI's routing, dependencies and layers.

Under overload most requests are refusals, and on a machine whose cores also run the model every
microsecond a refusal costs is taken from inference. Through FastAPI's stack a 429 cost about a
millisecond of CPU (``benchmarks/null_model.py``); here it costs a path match, a few header reads
and the bounds the route itself would check first: the process's requests in flight and the
model's queue (``Overloaded``, the same message, reason, ``Retry-After`` and metrics). Anything
else (another route, an unknown model, a wrong API key or media type, a draining server) goes
on to the app, which answers as before.

The direct path (``FrontDoor._direct``) runs the route's own handler (``infer_response``,
``predict_response``) with the app's error handling (``pdserve_error``; anything else a logged 500
by ``CatchAll``) and the same route on the access line. It is taken only where the route would
reach that handler with the same arguments: POST, a well-formed name and version, the API key if
one is set, and for REST, ``top_k``, ``score_threshold`` and ``X-Request-Timeout-Ms`` absent or
plainly valid (``rest_params``). FastAPI's routing, dependencies, validation and layers were about
a third of a v2 request's front-end CPU (``benchmarks/null_model.py``, BENCHMARKS.md).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pdserve.api.accounting import count_refusal
from pdserve.api.auth import api_key_matches
from pdserve.api.errors import CatchAll, error_body, pdserve_error
from pdserve.api.inputs import ACCEPTED_TYPES
from pdserve.api.predict import TOP_K_DEFAULT, TOP_K_LEAST, TOP_K_MOST, predict_response
from pdserve.api.v2.inference import infer_response
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
    if not (text.isascii() and text.isdigit()) or text[0] == "0":
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


class _Route(NamedTuple):
    """What the access line reads of a route (``scope["route"].path``), for requests the door answers."""

    path: str


_V2_ROUTES = (_Route("/v2/models/{name}/infer"), _Route("/v2/models/{name}/versions/{version}/infer"))
_REST_ROUTES = (_Route("/predict"), _Route("/models/{name}/predict"))


def _plain_int(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def rest_params(query: bytes, timeout: str | None) -> tuple[dict[str, Any], int | None] | None:
    """The REST predict routes' ``top_k``, ``score_threshold`` and ``X-Request-Timeout-Ms``, where each
    is absent or plainly valid; None where FastAPI's validation must judge (and answer 422)."""
    top_k: int | None = TOP_K_DEFAULT
    given = _query_value(query, b"top_k")
    if given is not None:
        top_k = _plain_int(given)
        if top_k is None or not TOP_K_LEAST <= top_k <= TOP_K_MOST:
            return None
    threshold: float | None = None
    given = _query_value(query, b"score_threshold")
    if given is not None:
        if not given or not set(given) <= set("0123456789.") or given.count(".") > 1 or given == ".":
            return None
        threshold = float(given)
        if threshold > 1:
            return None
    timeout_ms = None
    if timeout is not None:
        timeout_ms = _plain_int(timeout)
        if timeout_ms is None or timeout_ms < 1:
            return None
    return {"top_k": top_k, "score_threshold": threshold}, timeout_ms


class FrontDoor:
    """ASGI layer between the request ids and the app (``factory.PdserveApp``). ``fastapi``: the app
    whose inference requests may go straight to their route's handler (None: all go through ``app``)."""

    def __init__(self, app: ASGIApp, service: InferenceService, fastapi: FastAPI | None = None) -> None:
        self.app = app
        self.service = service
        self.fastapi = fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            where = inference_target(scope["path"], scope["query_string"])
            if where is not None:
                model, version, v2 = where
                authorization, content_type = _headers(scope)
                if not api_key_matches(self.service.settings, authorization):
                    await self.app(scope, receive, send)  # 401 first, as the route answers
                    return
                refusal = self._refusal(model, version, v2, content_type)
                if refusal is not None:
                    exc, target = refusal
                    count_refusal(self.service, target, exc)
                    await _answer(send, error_body(scope["path"], exc.code, exc.message), exc.headers)
                    return
                if self.fastapi is not None:
                    direct = self._direct(scope, model, version, v2)
                    if direct is not None:
                        scope["app"] = self.fastapi  # what Starlette sets: the handlers read app.state
                        await CatchAll(direct)(scope, receive, send)
                        return
        await self.app(scope, receive, send)

    def _direct(self, scope: Scope, model: str | None, version: int | None, v2: bool) -> ASGIApp | None:
        """The route's handler as an ASGI app, where the route's own validation would pass; the access
        line's route set as the router sets it."""
        if v2:
            assert model is not None  # a v2 path always names its model
            scope["route"] = _V2_ROUTES[version is not None]
            return partial(self._handled, infer_response, (model, None if version is None else str(version)))
        timeout = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-timeout-ms"), None)
        taken = rest_params(scope["query_string"], timeout)
        if taken is None:
            return None
        params, timeout_ms = taken
        scope["route"] = _REST_ROUTES[scope["path"] != "/predict"]
        return partial(self._handled, predict_response, (model, version, params, timeout_ms))

    async def _handled(
        self, handler: Any, route_args: tuple[Any, ...], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """``handler(request, service, *route_args)``, its ``PdserveError`` answered by the app's own
        handler (anything else is ``CatchAll``'s), without FastAPI's routing and layers."""
        request = Request(scope, receive)
        response: Response
        try:
            response = await handler(request, self.service, *route_args)
        except PdserveError as exc:
            response = await pdserve_error(request, exc)
        await response(scope, receive, send)

    def _refusal(
        self, model: str | None, version: int | None, v2: bool, content_type: str
    ) -> tuple[Overloaded, ModelVersion] | None:
        service = self.service
        if not service.lifecycle.ready:
            return None  # draining or refusing: the route says so
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


def _headers(scope: Scope) -> tuple[str, str]:
    """The request's Authorization and Content-Type values ("" when absent)."""
    authorization = content_type = ""
    for key, value in scope["headers"]:
        if key == b"authorization":
            authorization = value.decode("latin-1")
        elif key == b"content-type":
            content_type = value.decode("latin-1")
    return authorization, content_type
