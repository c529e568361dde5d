"""Schemathesis hooks: schema-valid image bodies are real images.

No JSON Schema can say "these bytes decode as a JPEG", so for positive test cases the generated
bytes are replaced with real encoded images (in every accepted format); everything else about the
request (model, version, top_k, timeout, the number of images) stays as generated. Negative cases
keep their random bytes, and the server must refuse them.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import schemathesis
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.transport.serialization import Binary

PREDICT_PATHS = {"/predict", "/models/{name}/predict"}
V2_INFER_PATHS = {"/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"}
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/bmp": "BMP"}


def _image(fmt: str, seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32 + seed % 7, 24 + seed % 5), (seed % 255, 80, 160)).save(out, fmt)
    return out.getvalue()


def _replace_body(case: Any, body: Any) -> None:
    case.body = body
    # Schemathesis re-validates a changed body and cannot validate bytes against a JSON Schema, so it
    # would count this case as negative; these bodies are real images, valid by construction.
    case._meta.clear_dirty(ParameterLocation.BODY)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case._meta
    if case.operation.path not in PREDICT_PATHS | V2_INFER_PATHS or meta is None:
        return case
    body_info = meta.components.get(ParameterLocation.BODY)
    if GenerationMode.NEGATIVE in (meta.generation.mode, body_info.mode if body_info else None):
        return case  # a request meant to be refused keeps what makes it invalid
    media = (case.media_type or "").split(";")[0]
    body = case.body
    if case.operation.path in V2_INFER_PATHS:
        # A schema-valid v2 request with a real image: the one input an image model takes.
        image = base64.b64encode(_image("JPEG", 1)).decode()
        tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}
        _replace_body(case, {"inputs": [tensor]})
        case.media_type = "application/json"
    elif media == "multipart/form-data" and isinstance(body, dict):
        count = max(1, len(body.get("file") or []))
        _replace_body(case, {"file": [Binary(_image("PNG", i)) for i in range(count)]})
    elif media in FORMATS or media == "application/octet-stream":
        _replace_body(case, _image(FORMATS.get(media, "JPEG"), len(body) if isinstance(body, bytes | str) else 0))
    elif media == "application/json" and isinstance(body, dict):
        if isinstance(body.get("images"), list):
            encoded = [base64.b64encode(_image("JPEG", i)).decode() for i in range(len(body["images"]))]
            _replace_body(case, {"images": encoded})
        else:
            _replace_body(case, {"image": base64.b64encode(_image("WEBP", 3)).decode()})
    return case
