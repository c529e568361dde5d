"""Hostile and odd input over real HTTP: the right 4xx in the one error shape, nothing else harmed.

Every case also checks that the server still classifies a real photo afterwards, on the same
keep-alive connection where the case allows it.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pdserve.pipeline.hostile import bomb
from tests.helpers import DEFAULT_MODEL, ServerThread, make_repo, metric, running_app, sample_list, wait_until
from tests.unit.test_preprocess import UNUSUAL

pytestmark = pytest.mark.timeout(180)
JPEG = {"Content-Type": "image/jpeg"}
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = make_repo(tmp_path_factory.mktemp("repo"), {"instances": 1})
    with running_app(repo, max_body_bytes=MAX_BODY, max_images_per_request=4, body_timeout_s=1.0) as s:
        yield s


@pytest.fixture(scope="module")
def photo() -> bytes:
    return sample_list(1)[0][0].read_bytes()


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    return message


def still_serves(server: ServerThread, photo: bytes) -> None:
    assert httpx.post(f"{server.url}/predict", content=photo, headers=JPEG, timeout=60).status_code == 200


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_decompression_bombs_get_413(server: ServerThread, photo: bytes, fmt: str) -> None:
    r = httpx.post(f"{server.url}/predict", content=bomb(fmt), headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 413, "image_too_large")
    still_serves(server, photo)


def test_a_bomb_among_good_images_names_its_position(server: ServerThread, photo: bytes) -> None:
    files = [("file", ("a.jpg", photo, "image/jpeg")), ("file", ("b.png", bomb("PNG"), "image/png"))]
    message = assert_error(httpx.post(f"{server.url}/predict", files=files, timeout=60), 413, "image_too_large")
    assert message.startswith("image 2 of 2")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"[" * 5000 + b"]" * 5000, "application/json", 400, "bad_request"),
        (b'{"image": "not base64!"}', "application/json", 400, "bad_request"),
        (b'{"image": 42}', "application/json", 400, "bad_request"),
        (b'{"images": []}', "application/json", 400, "bad_request"),
        (b"\xff\xfe\x00", "application/json", 400, "bad_request"),
        (b"", "image/jpeg", 400, "invalid_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg", 400, "invalid_image"),
        (b"GIF89a" + b"\x00" * 100, "image/png", 400, "invalid_image"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"--x\r\ngarbage", "multipart/form-data; boundary=x", 400, "bad_request"),
        (b"garbage", "multipart/form-data", 400, "bad_request"),
    ],
    ids=[
        "nested-json",
        "invalid-base64",
        "base64-not-a-string",
        "empty-list",
        "not-utf8",
        "zero-bytes",
        "truncated-jpeg-header",
        "gif-as-png",
        "text",
        "broken-multipart",
        "multipart-without-boundary",
    ],
)
def test_malformed_bodies_get_4xx(
    server: ServerThread, photo: bytes, body: bytes, content_type: str, status: int, code: str
) -> None:
    r = httpx.post(f"{server.url}/predict", content=body, headers={"Content-Type": content_type})
    assert_error(r, status, code)
    still_serves(server, photo)


def test_a_truncated_photo_is_invalid(server: ServerThread, photo: bytes) -> None:
    r = httpx.post(f"{server.url}/predict", content=photo[: len(photo) // 2], headers=JPEG)
    assert_error(r, 400, "invalid_image")


def test_too_many_images_are_refused_before_any_is_decoded(server: ServerThread, photo: bytes) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    files = [("file", (f"{i}.jpg", b"not even an image", "image/jpeg")) for i in range(5)]
    assert_error(httpx.post(f"{server.url}/predict", files=files), 413, "too_many_images")
    doc = {"images": [base64.b64encode(photo).decode()] * 5}
    assert_error(httpx.post(f"{server.url}/predict", json=doc), 413, "too_many_images")
    after = httpx.get(f"{server.url}/metrics").text
    # refused before admission: nothing was admitted, so nothing was decoded
    admitted = metric(after, "pdserve_admission_total", model=DEFAULT_MODEL, decision="admitted")
    assert admitted == metric(before, "pdserve_admission_total", model=DEFAULT_MODEL, decision="admitted")


@pytest.mark.parametrize("kind", sorted(UNUSUAL))
def test_unusual_valid_images_are_classified(server: ServerThread, kind: str) -> None:
    r = httpx.post(f"{server.url}/predict", content=UNUSUAL[kind](), headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 5


def test_a_long_thin_image_is_classified_without_blowing_up(server: ServerThread) -> None:
    out = io.BytesIO()
    Image.fromarray(np.full((2, 30_000, 3), 128, np.uint8)).save(out, "PNG")
    r = httpx.post(f"{server.url}/predict", content=out.getvalue(), headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text


def test_a_body_over_the_limit_sent_whole_still_gets_its_413(server: ServerThread, photo: bytes) -> None:
    # urllib sends the whole body, with Connection: close, before it reads the answer. Unless the
    # server reads (and drops) the body first, closing the socket with unread data sends a reset
    # that destroys the 413 in the client's buffer: ConnectionResetError instead of an answer.
    big = b"\0" * (8 * MAX_BODY)
    request = urllib.request.Request(f"{server.url}/predict", data=big, headers=JPEG)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["error"]["code"] == "payload_too_large"
    r = httpx.post(f"{server.url}/predict", content=big, headers=JPEG, timeout=60)
    assert_error(r, 413, "payload_too_large")
    chunked = httpx.post(f"{server.url}/predict", content=iter([big[:MAX_BODY], big[MAX_BODY:]]), headers=JPEG)
    assert_error(chunked, 413, "payload_too_large")
    still_serves(server, photo)


def _connect(server: ServerThread) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.connect()
    return conn


def test_the_connection_stays_open_after_client_errors(server: ServerThread, photo: bytes) -> None:
    conn = _connect(server)
    sock = conn.sock
    for body, ctype in [(b"junk", "image/jpeg"), (b"[" * 5000, "application/json"), (photo, "image/jpeg")]:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
        response = conn.getresponse()
        response.read()
        assert response.getheader("connection") != "close"
    assert conn.sock is sock  # the same TCP connection served all three
    conn.close()


def test_the_connection_stays_open_after_a_500(
    server: ServerThread, photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = server.app.state.service  # the app runs in this process

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "predict", broken)
    conn = _connect(server)
    sock = conn.sock
    conn.request("POST", "/predict", body=photo, headers=JPEG)
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 500
    assert body == {
        "error": {
            "code": "internal_error",
            "message": "internal server error",
            "request_id": response.getheader("x-request-id"),  # to find the traceback in the log
        }
    }
    monkeypatch.undo()
    conn.request("POST", "/predict", body=photo, headers=JPEG)
    again = conn.getresponse()
    again.read()
    assert again.status == 200
    assert conn.sock is sock
    conn.close()


def _metrics(server: ServerThread) -> str:
    return httpx.get(f"{server.url}/metrics").text


def test_a_disconnect_during_upload_is_counted_not_a_500(server: ServerThread, photo: bytes) -> None:
    before = _metrics(server)
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 500000\r\n\r\n"
    sock.sendall(head + b"\0" * 1000)
    reason = {"model": DEFAULT_MODEL, "reason": "client_disconnected"}

    def started_reading() -> bool:
        return metric(_metrics(server), "pdserve_inflight_requests", model=DEFAULT_MODEL) >= 1

    wait_until(started_reading, 30, "the server to start reading the body")
    sock.close()
    wait_until(
        lambda: (
            metric(_metrics(server), "pdserve_request_errors_total", **reason)
            > metric(before, "pdserve_request_errors_total", **reason)
        ),
        30,
        "the disconnect to be counted",
    )
    after = _metrics(server)
    assert metric(after, "pdserve_requests_total", model=DEFAULT_MODEL, status="500") == metric(
        before, "pdserve_requests_total", model=DEFAULT_MODEL, status="500"
    )
    still_serves(server, photo)


def test_a_slow_body_gets_408(server: ServerThread, photo: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n"
    sock.sendall(head + b"\0" * 10)  # ... and nothing more, for longer than body_timeout_s (1 s)
    answer = sock.recv(65536).decode(errors="replace")
    sock.close()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"code":"body_timeout"' in answer
    still_serves(server, photo)


def test_every_error_names_itself_in_the_one_shape(server: ServerThread, tmp_path: Path) -> None:
    r = httpx.post(f"{server.url}/predict?top_k=0", content=b"x", headers=JPEG)
    assert_error(r, 422, "validation_error")
    assert_error(httpx.get(f"{server.url}/nope"), 404, "not_found")
    assert_error(httpx.get(f"{server.url}/predict"), 405, "method_not_allowed")
    r = httpx.post(f"{server.url}/predict", content=b"x", headers={**JPEG, "X-Request-Timeout-Ms": "-5"})
    assert_error(r, 422, "validation_error")
