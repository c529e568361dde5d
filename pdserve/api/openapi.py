"""The OpenAPI document, made to say exactly what the server accepts.

FastAPI describes an optional parameter as ``anyOf: [T, null]``; a query string or a header cannot
carry a JSON null, so clients and fuzzers that take the document at its word send the text
``null`` and get a 422. Optional parameters are described by their type alone.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    options = schema.get("anyOf")
    if not options:
        return schema
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**kept[0], **rest}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes, description=None
            )
            for path in doc.get("paths", {}).values():
                for operation in path.values():
                    for param in operation.get("parameters", []):
                        param["schema"] = _without_null(param["schema"])
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
