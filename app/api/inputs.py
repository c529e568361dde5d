"""Getting image bytes out of a request: multipart ``file`` fields, a raw body, or base64 JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

RAW_IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp", "application/octet-stream"}
MAX_IMAGES_PER_REQUEST = 64
_ACCEPTED = "multipart/form-data (field 'file'), image/jpeg, image/png, image/webp, image/bmp or application/json"


async def read_body(request: Request, limit: int) -> bytes:
    """Read the whole body, refusing it with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} (PDSERVE_MAX_BODY_BYTES)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes (PDSERVE_MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a base64 string")
    if value.startswith("data:") and "," in value:  # accept data URLs as browsers produce them
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None


def _from_json(body: bytes) -> tuple[list[bytes], bool]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest('body is not valid JSON; send {"image": "<base64>"}') from None
    if isinstance(doc, dict) and "image" in doc:
        return [_b64(doc["image"], "'image'")], False
    if isinstance(doc, dict) and isinstance(doc.get("images"), list) and doc["images"]:
        return [_b64(v, f"'images'[{i}]") for i, v in enumerate(doc["images"])], True
    raise BadRequest('JSON body needs "image": "<base64>" (or "images": ["<base64>", ...])')


async def _from_multipart(request: Request, body: bytes) -> tuple[list[bytes], bool]:
    sent = False

    async def replay() -> Message:  # the body is already read (size-checked); hand it to the parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=MAX_IMAGES_PER_REQUEST)
    try:
        fields = form.getlist("file")
        if not fields:
            raise BadRequest("multipart body has no 'file' field; send the image as file=@photo.jpg")
        images = []
        for field in fields:
            if not isinstance(field, UploadFile):
                raise BadRequest("'file' must be a file upload, not a text field")
            images.append(await field.read())
        return images, len(images) > 1
    finally:
        await form.close()


async def read_images(request: Request, limit: int) -> tuple[list[bytes], bool]:
    """Return the posted images and whether the client asked for a list of results."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in RAW_IMAGE_TYPES | {"multipart/form-data", "application/json"}:
        shown = media_type or "no Content-Type"
        raise UnsupportedMediaType(f"{shown} is not supported; send {_ACCEPTED}")
    body = await read_body(request, limit)
    if media_type == "multipart/form-data":
        images, many = await _from_multipart(request, body)
    elif media_type == "application/json":
        images, many = _from_json(body)
    else:
        images, many = [body], False
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise BadRequest(f"at most {MAX_IMAGES_PER_REQUEST} images per request")
    return images, many


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away. Call only after the body has been read."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
