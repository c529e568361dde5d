"""The real app, on a real uvicorn, serving the shipped EfficientNet-Lite0 from model_repo/."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pdserve.model_config import load_model_config
from tests.helpers import DEFAULT_MODEL, MODEL_REPO, ServerThread, metric, running_app, sample_list

pytestmark = pytest.mark.timeout(180)
SHIPPED = sorted(p.name for p in MODEL_REPO.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with running_app(MODEL_REPO) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def photos() -> list[tuple[Path, int]]:
    rows = sample_list()
    # photos of distinct classes this model gets right (checked by test_raw_body_is_classified & co)
    wanted = {0, 1, 2, 130, 340}
    return [r for r in rows if r[1] in wanted]


def top1(body: dict[str, object]) -> int:
    preds = body["predictions"]
    assert isinstance(preds, list)
    return int(preds[0]["class_id"])


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


def test_raw_body_is_classified(client: httpx.Client, photos: list[tuple[Path, int]]) -> None:
    path, label = photos[0]
    r = client.post("/predict", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == DEFAULT_MODEL
    assert body["version"] == 1
    assert len(body["predictions"]) == 5
    assert top1(body) == label
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True)
    assert 0 < sum(scores) <= 1.0001
    assert body["predictions"][0]["label"] == (MODEL_REPO / DEFAULT_MODEL / "labels.txt").read_text().split()[label]


def test_multipart_one_and_several_files_keep_order(client: httpx.Client, photos: list[tuple[Path, int]]) -> None:
    path, label = photos[1]
    one = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    assert one.status_code == 200, one.text
    assert top1(one.json()) == label

    singles = [
        client.post("/predict", content=p.read_bytes(), headers={"Content-Type": "image/jpeg"}).json()["predictions"]
        for p, _ in photos
    ]
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p, _ in photos]
    many = client.post("/predict", files=files)
    assert many.status_code == 200, many.text
    results = many.json()["results"]
    assert len(results) == len(photos) > 1
    for result, single in zip(results, singles, strict=True):  # in the order posted
        assert [p["class_id"] for p in result["predictions"]] == [p["class_id"] for p in single]
        assert [p["score"] for p in result["predictions"]] == pytest.approx([p["score"] for p in single], abs=1e-5)


def test_base64_json_matches_raw_body(client: httpx.Client, photos: list[tuple[Path, int]]) -> None:
    data = photos[2][0].read_bytes()
    raw = client.post("/predict", content=data, headers={"Content-Type": "image/jpeg"}).json()
    encoded = base64.b64encode(data).decode()
    as_json = client.post("/predict", json={"image": encoded}).json()
    assert as_json == raw
    data_url = client.post("/predict", json={"image": "data:image/jpeg;base64," + encoded}).json()
    assert data_url == raw
    listed = client.post("/predict", json={"images": [encoded, encoded]}).json()
    assert [r["predictions"] for r in listed["results"]] == [raw["predictions"]] * 2


def test_named_model_route_version_and_top_k(client: httpx.Client, photos: list[tuple[Path, int]]) -> None:
    data, label = photos[3][0].read_bytes(), photos[3][1]
    headers = {"Content-Type": "image/jpeg"}
    r = client.post(f"/models/{DEFAULT_MODEL}/predict", content=data, headers=headers, params={"top_k": 10})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 10
    assert top1(r.json()) == label
    r = client.post("/predict", content=data, headers=headers, params={"model": DEFAULT_MODEL, "version": 1})
    assert r.status_code == 200
    assert top1(r.json()) == label


def test_unknown_model_and_version(client: httpx.Client, photos: list[tuple[Path, int]]) -> None:
    data = photos[0][0].read_bytes()
    headers = {"Content-Type": "image/jpeg"}
    msg = assert_error(client.post("/predict?model=nope", content=data, headers=headers), 404, "model_not_found")
    assert DEFAULT_MODEL in msg  # says what exists
    assert_error(client.post("/models/nope/predict", content=data, headers=headers), 404, "model_not_found")
    msg = assert_error(client.post("/predict?version=7", content=data, headers=headers), 404, "model_not_found")
    assert "version 7" in msg


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"not an image", "headers": {"Content-Type": "image/jpeg"}}, 400, "invalid_image"),
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"content": b"hello"}, 415, "unsupported_media_type"),
        ({"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
        ({"json": {"picture": "x"}}, 400, "bad_request"),
        ({"json": {"image": "%%%not-base64%%%"}}, 400, "bad_request"),
        ({"json": {"image": base64.b64encode(b"garbage").decode()}}, 400, "invalid_image"),
        ({"files": {"other": ("a.jpg", b"x", "image/jpeg")}}, 400, "bad_request"),
        ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "invalid_image"),
    ],
)
def test_bad_input_gets_a_clear_error(client: httpx.Client, kwargs: dict[str, object], status: int, code: str) -> None:
    assert_error(client.post("/predict", **kwargs), status, code)  # type: ignore[arg-type]


def test_one_bad_file_among_several_names_its_position(client: httpx.Client, photos: list[tuple[Path, int]]) -> None:
    files = [("file", ("a.jpg", photos[0][0].read_bytes(), "image/jpeg")), ("file", ("b.jpg", b"junk", "image/jpeg"))]
    msg = assert_error(client.post("/predict", files=files), 400, "invalid_image")
    assert msg.startswith("image 2 of 2")


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    big = b"\xff" * (16 * 1024 * 1024 + 1)
    assert_error(client.post("/predict", content=big, headers={"Content-Type": "image/jpeg"}), 413, "payload_too_large")


def test_framework_errors_use_the_same_shape(client: httpx.Client) -> None:
    assert_error(client.get("/no/such/path"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")
    msg = assert_error(client.post("/predict?top_k=0", content=b"x"), 422, "validation_error")
    assert "top_k" in msg


def test_models_listing(client: httpx.Client) -> None:
    listing = client.get("/models").json()["models"]
    assert [m["name"] for m in listing] == SHIPPED
    int8 = client.get(f"/models/{DEFAULT_MODEL}_int8").json()
    assert int8["precision"] == "int8"
    info = client.get(f"/models/{DEFAULT_MODEL}").json()
    assert info["state"] == "READY"
    assert info["precision"] == "fp32"
    assert info["device"] == "cpu"
    assert info["input"] == {"name": "x", "shape": [3, 224, 224], "dtype": "float32"}
    assert info["batch_sizes"] == [1, 2, 4, 8]
    assert info["random_weights"] is False
    assert info["instances"] == load_model_config(MODEL_REPO / DEFAULT_MODEL).instances
    (version,) = info["versions"]
    assert version["version"] == 1
    assert version["state"] == "READY"
    assert len(version["instances"]) == info["instances"]
    assert all(i["state"] in ("READY", "BUSY") for i in version["instances"])
    pids = {i["pid"] for i in version["instances"]}
    assert len(pids) == info["instances"]
    assert all(isinstance(p, int) for p in pids)
    assert_error(client.get("/models/nope"), 404, "model_not_found")


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "models": dict.fromkeys(SHIPPED, "READY"), "reasons": [], "degraded": []}


def test_metrics_record_requests_by_model_and_status(client: httpx.Client, photos: list[tuple[Path, int]]) -> None:
    before = client.get("/metrics").text
    client.post("/predict", content=photos[0][0].read_bytes(), headers={"Content-Type": "image/jpeg"})
    client.post("/predict", content=b"junk", headers={"Content-Type": "image/jpeg"})
    after = client.get("/metrics").text
    m = DEFAULT_MODEL

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("pdserve_requests_total", model=m, status="200") == 1
    assert delta("pdserve_requests_total", model=m, status="400") == 1
    assert delta("pdserve_request_errors_total", model=m, reason="invalid_image") == 1
    assert delta("pdserve_request_duration_seconds_count", model=m, status="200") == 1
    assert delta("pdserve_queue_wait_seconds_count", model=m) == 1  # the bad image never queued
    assert delta("pdserve_batch_size_count", model=m) == 1
    assert delta("pdserve_inference_compute_seconds_count", model=m) == 1
    assert metric(after, "pdserve_workers_alive", model=m) == load_model_config(MODEL_REPO / m).instances
    assert metric(after, "pdserve_inflight_requests", model=m) == 0


def test_openapi_documents_the_request_bodies(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "application/json"} <= set(content)
    assert "404" in spec["paths"]["/predict"]["post"]["responses"]
