"""What happens around a batch: bad inputs, clients that leave, workers that die, models that fail.

Batches are made deterministic the Ray Serve way: a huge ``max_queue_delay_ms`` so a batch closes
only when it is full. Waits are on observable conditions (metrics, /readyz), never on a sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import DEFAULT_MODEL, ServerThread, make_repo, metric, running_app, sample_list, wait_until

pytestmark = pytest.mark.timeout(240)
JPEG = {"Content-Type": "image/jpeg"}
HOUR_MS = 3_600_000


def metrics(server: ServerThread) -> str:
    return httpx.get(f"{server.url}/metrics").text


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [p.read_bytes() for p, _ in sample_list(6)]


@pytest.fixture(scope="module")
def full_batches_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """Batches of exactly 3: the deadline is an hour away."""
    repo = make_repo(tmp_path_factory.mktemp("repo"), {"max_batch_size": 3, "max_queue_delay_ms": HOUR_MS})
    with running_app(repo) as server:
        yield server


async def post_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/predict", content=b, headers=JPEG) for b in bodies))


def test_a_bad_image_fails_alone_and_never_joins_a_batch(full_batches_only: ServerThread, images: list[bytes]) -> None:
    before = metrics(full_batches_only)
    # Three good images fill a batch of three; if the bad one had joined, the batch would have
    # closed with it and failed, or held a good image back until the hour-long deadline.
    responses = asyncio.run(post_all(full_batches_only.url, [images[0], b"corrupt", images[1], images[2]]))
    assert [r.status_code for r in responses] == [200, 400, 200, 200]
    assert responses[1].json()["error"]["code"] == "invalid_image"
    after = metrics(full_batches_only)
    count = "pdserve_batch_size_count"
    total = "pdserve_batch_size_sum"
    assert metric(after, count, model=DEFAULT_MODEL) - metric(before, count, model=DEFAULT_MODEL) == 1
    assert metric(after, total, model=DEFAULT_MODEL) - metric(before, total, model=DEFAULT_MODEL) == 3


def _raw_request(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_a_client_that_disconnects_is_dropped_from_its_batch(
    full_batches_only: ServerThread, images: list[bytes]
) -> None:
    server = full_batches_only
    before = metrics(server)
    sock = _raw_request(server.port, images[3])
    wait_until(
        lambda: metric(metrics(server), "pdserve_queue_depth", model=DEFAULT_MODEL) >= 1, 30, "the image to queue"
    )
    sock.close()  # the client leaves while its batch is still forming
    reason = {"model": DEFAULT_MODEL, "reason": "client_disconnected"}
    wait_until(
        lambda: (
            metric(metrics(server), "pdserve_request_errors_total", **reason)
            > metric(before, "pdserve_request_errors_total", **reason)
        ),
        30,
        "the server to notice the disconnect",
    )
    # Three new requests fill a batch of three by themselves: the departed one is not in it.
    responses = asyncio.run(post_all(server.url, images[:3]))
    assert [r.status_code for r in responses] == [200, 200, 200]
    after = metrics(server)
    assert (
        metric(after, "pdserve_batch_size_count", model=DEFAULT_MODEL)
        - metric(before, "pdserve_batch_size_count", model=DEFAULT_MODEL)
        == 1
    )
    assert (
        metric(after, "pdserve_batch_size_sum", model=DEFAULT_MODEL)
        - metric(before, "pdserve_batch_size_sum", model=DEFAULT_MODEL)
        == 3
    )


def test_a_worker_that_dies_fails_its_batch_and_is_restarted(tmp_path: Path, images: list[bytes]) -> None:
    repo = make_repo(tmp_path, {"max_batch_size": 2, "max_queue_delay_ms": 0, "instances": 1})
    with running_app(repo, request_timeout_s=120) as server:
        pid = httpx.get(f"{server.url}/models/{DEFAULT_MODEL}").json()["versions"][0]["instances"][0]["pid"]
        before = metrics(server)
        os.kill(pid, signal.SIGSTOP)  # frozen: the next batch reaches it and stays there
        try:

            async def in_flight() -> httpx.Response:
                async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                    task = asyncio.ensure_future(client.post("/predict", content=images[0], headers=JPEG))
                    await asyncio.to_thread(
                        wait_until,
                        lambda: (
                            metric(metrics(server), "pdserve_queue_wait_seconds_count", model=DEFAULT_MODEL)
                            > metric(before, "pdserve_queue_wait_seconds_count", model=DEFAULT_MODEL)
                        ),
                        30,
                        "the batch to reach the worker",
                    )
                    os.kill(pid, signal.SIGKILL)
                    return await task

            response = asyncio.run(in_flight())
        finally:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "worker_died"
        assert response.headers["Retry-After"] == "1"
        # Readiness reflects the restart while it happens (loading Paddle takes seconds) ...
        not_ready = httpx.get(f"{server.url}/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["models"][DEFAULT_MODEL] == "RECOVERING"
        # ... and the model serves again afterwards, from a new process.
        server.wait_ready(120)
        info = httpx.get(f"{server.url}/models/{DEFAULT_MODEL}").json()["versions"][0]["instances"][0]
        assert info["pid"] != pid
        assert info["restarts"] == 1
        again = httpx.post(f"{server.url}/predict", content=images[0], headers=JPEG, timeout=60)
        assert again.status_code == 200
        after = metrics(server)
        assert metric(after, "pdserve_worker_restarts_total", model=DEFAULT_MODEL) == 1
        assert metric(after, "pdserve_request_errors_total", model=DEFAULT_MODEL, reason="worker_died") == 1


def test_broken_models_fail_alone_with_reasons(tmp_path: Path, images: list[bytes]) -> None:
    repo = make_repo(tmp_path / "repo")
    # a config error, a model file Paddle cannot read, and a GPU model on this CPU-only build
    bad_config = make_repo(tmp_path / "a", {"max_batch_size": 0}) / DEFAULT_MODEL
    bad_config.rename(repo / "bad_config")
    corrupt = repo / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.yaml").write_text(yaml.safe_dump({"max_batch_size": 2}))
    (corrupt / "1").mkdir()
    (corrupt / "1" / "model.pdmodel").write_bytes(b"not a program")
    (corrupt / "1" / "model.pdiparams").write_bytes(b"no weights")
    gpu = make_repo(tmp_path / "b", {"device": "gpu:0"}) / DEFAULT_MODEL
    gpu.rename(repo / "gpu_model")

    with running_app(repo, ready=False) as server:
        url = server.url

        def settled() -> dict[str, str] | None:
            states: dict[str, str] = httpx.get(f"{url}/readyz").json()["models"]
            return states if all(s in ("READY", "FAILED") for s in states.values()) else None

        states = wait_until(settled, 120, "every model to load or fail")
        assert states == {
            "bad_config": "FAILED",
            "corrupt": "FAILED",
            DEFAULT_MODEL: "READY",
            "gpu_model": "FAILED",
        }
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503
        reasons = " | ".join(ready.json()["reasons"])
        assert "bad_config/config.yaml: field 'max_batch_size'" in reasons
        assert "no CUDA" in reasons
        info = {m["name"]: m for m in httpx.get(f"{url}/models").json()["models"]}
        # Paddle segfaults on this file: in a worker process that costs only this model its load
        assert "SIGSEGV" in info["corrupt"]["versions"][0]["error"]
        # the good model serves; the broken ones answer 503 with their reason
        good = httpx.post(f"{url}/predict?model={DEFAULT_MODEL}", content=images[0], headers=JPEG, timeout=60)
        assert good.status_code == 200
        bad = httpx.post(f"{url}/predict?model=gpu_model", content=images[0], headers=JPEG)
        assert bad.status_code == 503
        assert bad.json()["error"]["code"] == "model_unavailable"  # failed for good: retrying will not help
        assert "Retry-After" not in bad.headers
        assert "gpu:0" in bad.json()["error"]["message"]
        assert httpx.post(f"{url}/predict", content=images[0], headers=JPEG).status_code == 404  # must name one


def test_a_repository_without_models_refuses_to_start(tmp_path: Path) -> None:
    from pdserve.errors import ModelLoadError
    from pdserve.factory import create_app
    from pdserve.settings import Settings

    with pytest.raises(ModelLoadError, match="has no model folders"):
        create_app(Settings(model_repo=tmp_path))
