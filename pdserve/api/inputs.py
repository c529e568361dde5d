"""Getting image bytes out of a request: multipart ``file`` fields, a raw body, or base64 JSON.

Everything here is bounded: the body's size (413, decided from Content-Length before reading when
it is declared), the time the client takes to send it (408), the number of images (413, counted
before any is decoded), and the JSON's nesting (400). A client that leaves mid-upload is a
``ClientDisconnected``, not a server error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from pdserve.admission import ProcessLimits
from pdserve.errors import (
    BadRequest,
    BodyTimeout,
    ClientDisconnected,
    PayloadTooLarge,
    TooManyImages,
    UnsupportedMediaType,
)

RAW_IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp", "application/octet-stream"}
ACCEPTED_TYPES = RAW_IMAGE_TYPES | {"multipart/form-data", "application/json"}
_ACCEPTED = "multipart/form-data (field 'file'), image/jpeg, image/png, image/webp, image/bmp or application/json"
# A body over the limit that the client sends anyway is read and dropped up to this many times the
# limit, so that the client, busy sending, still gets its 413; past that the connection is closed.
DISCARD_FACTOR = 8


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    timeout_s: float
    max_images: int


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_media_type(request: Request) -> str:
    kind = media_type(request)
    if kind not in ACCEPTED_TYPES:
        raise UnsupportedMediaType(f"{kind or 'no Content-Type'} is not supported; send {_ACCEPTED}")
    return kind


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ClientDisconnected("client disconnected while sending its body") from None


async def _discard(request: Request, limit: int, timeout_s: float) -> None:
    """Read and drop a refused body (bounded), so a client that sends it all still reads our answer."""
    dropped = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in _chunks(request):
                dropped += len(chunk)
                if dropped > limit * DISCARD_FACTOR:
                    return
    except (TimeoutError, ClientDisconnected):
        return


async def read_body(request: Request, limits: BodyLimits, process: ProcessLimits) -> bytes:
    """Read the whole body within ``timeout_s``, refusing it with 413 past ``max_bytes``."""
    declared = declared_length(request)
    if declared is not None and declared > limits.max_bytes:
        await _discard(request, limits.max_bytes, limits.timeout_s)
        raise PayloadTooLarge(
            f"body of {declared} bytes exceeds the limit of {limits.max_bytes} (PDSERVE_MAX_BODY_BYTES)"
        )
    reserved = declared if declared is not None else limits.max_bytes
    process.reserve_body(reserved)
    try:
        chunks, size = [], 0
        try:
            async with asyncio.timeout(limits.timeout_s):
                async for chunk in _chunks(request):
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise PayloadTooLarge(
                            f"body exceeds the limit of {limits.max_bytes} bytes (PDSERVE_MAX_BODY_BYTES)"
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise BodyTimeout(
                f"the body was not received within {limits.timeout_s:g}s (PDSERVE_BODY_TIMEOUT_S)"
            ) from None
        return b"".join(chunks)
    finally:
        process.release_body(reserved)


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a base64 string")
    if value.startswith("data:") and "," in value:  # accept data URLs as browsers produce them
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None


def _from_json(body: bytes, max_images: int) -> tuple[list[bytes], bool]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest('body is not valid JSON; send {"image": "<base64>"}') from None
    except RecursionError:
        raise BadRequest("JSON body is nested too deeply") from None
    if isinstance(doc, dict) and "image" in doc:
        return [_b64(doc["image"], "'image'")], False
    if isinstance(doc, dict) and isinstance(doc.get("images"), list) and doc["images"]:
        if len(doc["images"]) > max_images:
            raise TooManyImages(f"{len(doc['images'])} images in one request; at most {max_images}")
        return [_b64(v, f"'images'[{i}]") for i, v in enumerate(doc["images"])], True
    raise BadRequest('JSON body needs "image": "<base64>" (or "images": ["<base64>", ...])')


async def _from_multipart(request: Request, body: bytes, max_images: int) -> tuple[list[bytes], bool]:
    async def replay() -> AsyncGenerator[bytes, None]:  # the body is already read (size-checked)
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=max_images, max_fields=max_images)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith(("Too many files", "Too many fields")):
            raise TooManyImages(f"more than {max_images} parts in one request") from None
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
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


async def read_images(request: Request, limits: BodyLimits, process: ProcessLimits) -> tuple[list[bytes], bool]:
    """Return the posted images (not yet decoded) and whether the client asked for a list of results."""
    kind = check_media_type(request)
    body = await read_body(request, limits, process)
    if kind == "multipart/form-data":
        return await _from_multipart(request, body, limits.max_images)
    if kind == "application/json":
        return _from_json(body, limits.max_images)
    return [body], False


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away. Call only after the body has been read."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
