"""Request ids and the access log on a real uvicorn with the real model: the id a client sends (or
one made up) comes back in the header and in error bodies, and lands in the request's access line."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import DEFAULT_MODEL, ServerThread, make_repo, running_app, sample_list

pytestmark = pytest.mark.timeout(240)
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = make_repo(tmp_path_factory.mktemp("repo"), {"instances": 1})
    with running_app(repo) as running:
        yield running


def _access(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, object]:
    lines = [r.access for r in caplog.records if r.name == "pdserve.access" and r.access["request_id"] == request_id]  # type: ignore[attr-defined]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    return dict(lines[0])


def test_the_clients_id_is_echoed_and_its_access_line_has_the_timings(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    photo = sample_list(1)[0][0].read_bytes()
    with caplog.at_level(logging.INFO, logger="pdserve.access"):
        r = httpx.post(f"{server.url}/predict", content=photo, headers={**JPEG, "X-Request-ID": "order-42:a/b"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "order-42:a/b"
    line = _access(caplog, "order-42:a/b")
    assert line["route"] == "/predict"
    assert (line["status"], line["model"], line["version"], line["images"]) == (200, DEFAULT_MODEL, 1, 1)
    assert line["batch_size"] == 1
    timings = {k: line[k] for k in ("admission_ms", "queue_ms", "compute_ms", "total_ms")}
    assert all(isinstance(v, float) and v >= 0 for v in timings.values()), timings
    total, admission, compute = (float(str(timings[k])) for k in ("total_ms", "admission_ms", "compute_ms"))
    assert total >= admission + compute


def test_errors_carry_the_id_in_body_and_header_in_both_protocols(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pdserve.access"):
        rest = httpx.post(f"{server.url}/predict", content=b"not an image", headers={**JPEG, "X-Request-ID": "r1"})
        v2 = httpx.post(f"{server.url}/v2/models/nope/infer", json={"inputs": []}, headers={"X-Request-ID": "r2"})
    assert rest.status_code == 400
    assert rest.json()["error"]["request_id"] == rest.headers["x-request-id"] == "r1"
    assert v2.status_code == 404
    assert v2.json() == {"error": v2.json()["error"], "request_id": "r2"}
    assert _access(caplog, "r1")["status"] == 400
    assert _access(caplog, "r2")["status"] == 404


@pytest.mark.parametrize("given", [None, "", "x" * 129, "has space", "<script>"])
def test_a_missing_or_unsafe_id_is_replaced_by_a_new_one(server: ServerThread, given: str | None) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    first = httpx.get(f"{server.url}/models", headers=headers).headers["x-request-id"]
    second = httpx.get(f"{server.url}/models", headers=headers).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


@pytest.mark.parametrize("path", ["/v2/models/{m}/infer", "/v2/models/{m}/versions/1/infer"])
def test_v2_infer_taken_straight_to_its_handler_logs_its_route_as_the_router_would(
    server: ServerThread, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """The front door runs a v2 infer request's handler itself (api/door.py): the access line still
    names the route's template, the model and the timings, and a wrong version still answers in v2's
    shape."""
    import base64

    photo = base64.b64encode(sample_list(1)[0][0].read_bytes()).decode()
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [photo]}]}
    with caplog.at_level(logging.INFO, logger="pdserve.access"):
        ok = httpx.post(server.url + path.format(m=DEFAULT_MODEL), json=body, headers={"X-Request-ID": "v2-ok"})
        wrong = httpx.post(f"{server.url}/v2/models/{DEFAULT_MODEL}/versions/9/infer", json=body)
    assert ok.status_code == 200, ok.text
    line = _access(caplog, "v2-ok")
    assert line["route"] == path.replace("{m}", "{name}").replace("/1/", "/{version}/")
    assert (line["status"], line["model"], line["version"], line["images"]) == (200, DEFAULT_MODEL, 1, 1)
    assert isinstance(line["compute_ms"], float)
    assert wrong.status_code == 404
    assert set(wrong.json()) == {"error", "request_id"}
