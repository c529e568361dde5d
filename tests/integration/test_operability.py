"""Overload, deadlines, hung workers, readiness and drain, on a real uvicorn with real workers.

Batches are held open the Ray Serve way (an hour-long ``max_queue_delay_ms`` with a batch size
the test never fills), so what is queued is known exactly; waits are on metrics, never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import DEFAULT_MODEL, ServerThread, make_repo, metric, running_app, sample_list, wait_until

pytestmark = pytest.mark.timeout(240)
JPEG = {"Content-Type": "image/jpeg"}
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def photo() -> bytes:
    return sample_list(1)[0][0].read_bytes()


def metrics(server: ServerThread) -> str:
    return httpx.get(f"{server.url}/metrics").text


def queued(server: ServerThread) -> float:
    return metric(metrics(server), "pdserve_queue_depth", model=DEFAULT_MODEL)


@pytest.fixture(scope="module")
def threes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """Batches of 3 that close only when full."""
    repo = make_repo(
        tmp_path_factory.mktemp("repo"), {"max_batch_size": 3, "max_queue_delay_ms": HOUR_MS, "instances": 1}
    )
    with running_app(repo) as server:
        yield server


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """Batches of 4 that never fill: at most 3 images may be admitted and not dispatched."""
    repo = make_repo(
        tmp_path_factory.mktemp("repo"),
        {"max_batch_size": 4, "max_queue_delay_ms": HOUR_MS, "max_queue_size": 3, "instances": 1},
    )
    with running_app(repo, max_inflight_requests=6) as server:
        yield server


async def _post(client: httpx.AsyncClient, body: bytes, timeout_ms: int | None = None) -> httpx.Response:
    headers = dict(JPEG)
    if timeout_ms is not None:
        headers["X-Request-Timeout-Ms"] = str(timeout_ms)
    return await client.post("/predict", content=body, headers=headers)


def test_a_queued_request_gets_504_at_its_deadline_and_is_never_run(threes: ServerThread, photo: bytes) -> None:
    before = metrics(threes)

    async def scenario() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=threes.url, timeout=60) as client:
            late = await _post(client, photo, timeout_ms=300)  # alone, its batch never fills
            # Three fresh requests fill a batch of three by themselves: the expired one is not in it.
            fresh = await asyncio.gather(*(_post(client, photo) for _ in range(3)))
            return late, list(fresh)

    late, fresh = asyncio.run(scenario())
    assert late.status_code == 504
    assert late.json()["error"]["code"] == "timeout"
    assert [r.status_code for r in fresh] == [200] * 3
    after = metrics(threes)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, model=DEFAULT_MODEL, **labels) - metric(before, name, model=DEFAULT_MODEL, **labels)

    assert delta("pdserve_batch_size_count") == 1
    assert delta("pdserve_batch_size_sum") == 3
    assert delta("pdserve_deadline_expired_total", stage="batching") == 1


def test_a_request_that_cannot_be_served_in_time_is_refused_at_once(threes: ServerThread, photo: bytes) -> None:
    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=threes.url, timeout=60) as client:
            await asyncio.gather(*(_post(client, photo) for _ in range(3)))  # a full batch: a drain rate
            waiting = [asyncio.ensure_future(_post(client, photo, timeout_ms=3000)) for _ in range(2)]
            await asyncio.to_thread(wait_until, lambda: queued(threes) == 2, 30, "two images to queue")
            # Two images ahead take some milliseconds at any plausible speed; 1 ms is not enough.
            hopeless = await _post(client, photo, timeout_ms=1)
            await asyncio.gather(*waiting)
            return hopeless

    r = asyncio.run(scenario())
    assert r.status_code == 429
    assert "exceeds this request's deadline" in r.json()["error"]["message"]


def test_past_the_bound_requests_get_429_before_decoding(held: ServerThread, photo: bytes) -> None:
    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=held.url, timeout=60) as client:
            waiting = [asyncio.ensure_future(_post(client, photo, timeout_ms=5000)) for _ in range(3)]
            await asyncio.to_thread(wait_until, lambda: queued(held) == 3, 30, "three images to queue")
            # Full: refused at once, and before decoding: a corrupt image gets 429, not 400.
            refused = [await _post(client, photo), await _post(client, b"corrupt")]
            fourth = await _post(client, photo)  # a valid image: still no room
            results = await asyncio.gather(*waiting)
            return [*refused, fourth, *results]

    before = metrics(held)
    responses = asyncio.run(scenario())
    for r in responses[:3]:
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    assert [r.status_code for r in responses[3:]] == [504, 504, 504]  # never filled: their deadlines passed
    after = metrics(held)
    refusals = metric(after, "pdserve_admission_total", model=DEFAULT_MODEL, decision="queue_full") - metric(
        before, "pdserve_admission_total", model=DEFAULT_MODEL, decision="queue_full"
    )
    assert refusals == 3


def test_the_process_wide_request_limit_answers_429_at_once(held: ServerThread, photo: bytes) -> None:
    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=held.url, timeout=60) as client:
            # Six in flight (the limit): three uploads that never finish, three images queued.
            slow = [asyncio.ensure_future(client.post("/predict", content=_trickle(), headers=JPEG)) for _ in range(3)]
            await asyncio.to_thread(
                wait_until,
                lambda: metric(metrics(held), "pdserve_inflight_requests", model=DEFAULT_MODEL) == 3,
                30,
                "three uploads in flight",
            )
            waiting = [asyncio.ensure_future(_post(client, photo, timeout_ms=3000)) for _ in range(3)]
            await asyncio.to_thread(wait_until, lambda: queued(held) == 3, 30, "three images to queue")
            refused = await _post(client, photo)
            for task in slow:
                task.cancel()
            await asyncio.gather(*waiting)
            return refused

    refused = asyncio.run(scenario())
    assert refused.status_code == 429
    assert "requests in flight" in refused.json()["error"]["message"]


def test_refusals_at_the_door_keep_each_protocols_shape_and_let_other_errors_through(
    held: ServerThread, photo: bytes
) -> None:
    """With the queue full, the front door answers 429 before the route runs: in REST's and v2's
    error shape, with Retry-After and the request id, counted like any request. What the route would
    refuse for another reason first (unknown model, wrong media type) still gets the route's answer."""

    async def scenario() -> dict[str, httpx.Response]:
        async with httpx.AsyncClient(base_url=held.url, timeout=60) as client:
            waiting = [asyncio.ensure_future(_post(client, photo, timeout_ms=3000)) for _ in range(3)]
            await asyncio.to_thread(wait_until, lambda: queued(held) == 3, 30, "three images to queue")
            out = {
                "rest": await client.post(f"/models/{DEFAULT_MODEL}/predict", content=photo, headers=JPEG),
                "v2": await client.post(f"/v2/models/{DEFAULT_MODEL}/infer", content=b"{}"),
                "unknown": await client.post("/predict?model=nope", content=photo, headers=JPEG),
                "media": await client.post("/predict", content=photo, headers={"Content-Type": "text/plain"}),
                "bad_version": await client.post("/predict?version=x", content=photo, headers=JPEG),
            }
            await asyncio.gather(*waiting)
            return out

    before = metrics(held)
    r = asyncio.run(scenario())
    after = metrics(held)
    assert r["rest"].status_code == 429
    assert r["rest"].json()["error"]["code"] == "overloaded"
    assert r["rest"].json()["error"]["request_id"] == r["rest"].headers["X-Request-ID"]
    assert int(r["rest"].headers["Retry-After"]) >= 1
    assert r["v2"].status_code == 429
    assert "overloaded" in r["v2"].json()["error"]  # v2's shape: {"error": "<message>"}
    assert r["v2"].headers["X-Request-ID"]
    assert [r[k].status_code for k in ("unknown", "media", "bad_version")] == [404, 415, 422]

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, model=DEFAULT_MODEL, **labels) - metric(before, name, model=DEFAULT_MODEL, **labels)

    assert delta("pdserve_requests_total", status="429") == 2
    assert delta("pdserve_request_errors_total", reason="overloaded") == 2
    assert delta("pdserve_admission_total", decision="queue_full") == 2


async def _trickle() -> AsyncIterator[bytes]:
    yield b"\xff\xd8"
    await asyncio.sleep(3600)


# ---- supervision and readiness ---------------------------------------------------------------------


def _instances(server: ServerThread) -> list[dict[str, object]]:
    instances: list[dict[str, object]] = httpx.get(f"{server.url}/models/{DEFAULT_MODEL}").json()["versions"][0][
        "instances"
    ]
    return instances


def test_a_hung_worker_is_killed_its_callers_answered_and_it_is_replaced(tmp_path: Path, photo: bytes) -> None:
    repo = make_repo(tmp_path, {"instances": 1, "max_queue_delay_ms": 0, "compute_timeout_ms": 1500})
    with running_app(repo) as server:
        pid = int(str(_instances(server)[0]["pid"]))
        os.kill(pid, signal.SIGSTOP)  # stands for a deadlocked predictor
        try:
            r = httpx.post(f"{server.url}/predict", content=photo, headers=JPEG, timeout=60)
        finally:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "worker_hung"
        assert r.headers["Retry-After"] == "1"
        server.wait_ready(120)
        info = _instances(server)[0]
        assert info["pid"] != pid
        assert info["restarts"] == 1
        assert httpx.post(f"{server.url}/predict", content=photo, headers=JPEG, timeout=60).status_code == 200


def test_one_instance_down_is_degraded_not_unready(tmp_path: Path, photo: bytes) -> None:
    repo = make_repo(tmp_path, {"instances": 2})
    with running_app(repo) as server:
        pid = int(str(_instances(server)[0]["pid"]))
        os.kill(pid, signal.SIGKILL)
        ready = wait_until(
            lambda: (r := httpx.get(f"{server.url}/readyz")).json()["models"][DEFAULT_MODEL] == "DEGRADED" and r,
            30,
            "the model to report DEGRADED",
        )
        assert ready.status_code == 200  # one instance still serves: no reason to pull the pod
        assert "instance 0" in ready.json()["degraded"][0]
        assert httpx.get(f"{server.url}/models/{DEFAULT_MODEL}/ready").status_code == 200
        assert httpx.post(f"{server.url}/predict", content=photo, headers=JPEG, timeout=60).status_code == 200
        wait_until(lambda: httpx.get(f"{server.url}/readyz").json()["models"][DEFAULT_MODEL] == "READY", 120, "READY")


def test_a_failed_model_that_is_not_required_leaves_the_server_ready(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    broken = repo / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text(yaml.safe_dump({"required": False}))
    (broken / "1").mkdir()
    (broken / "1" / "model.pdmodel").write_bytes(b"not a program")
    (broken / "1" / "model.pdiparams").write_bytes(b"no weights")
    with running_app(repo, ready=False) as server:
        wait_until(
            lambda: (
                httpx.get(f"{server.url}/readyz").json()["models"].get("broken") == "FAILED"
                and httpx.get(f"{server.url}/readyz").status_code == 200
            ),
            120,
            "the server to be ready with 'broken' FAILED",
        )
        body = httpx.get(f"{server.url}/readyz").json()
        assert body["reasons"] == []
        assert "model 'broken' is FAILED" in body["degraded"][0]
        assert httpx.get(f"{server.url}/models/broken/ready").status_code == 503
        assert httpx.get(f"{server.url}/models/{DEFAULT_MODEL}/ready").json()["ready"] is True
        assert httpx.get(f"{server.url}/models/nope/ready").status_code == 404


def test_strict_readiness_off_needs_only_one_model_serving(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    broken = repo / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("max_batch_size: 0\n")  # required (the default), but broken
    with running_app(repo, ready=False, strict_readiness=False) as server:
        server.wait_ready(120)
        assert httpx.get(f"{server.url}/readyz").json()["models"]["broken"] == "FAILED"


# ---- drain -------------------------------------------------------------------------------------------


def test_drain_turns_readiness_off_at_once_keeps_accepting_then_answers_everything(
    tmp_path: Path, photo: bytes
) -> None:
    repo = make_repo(tmp_path, {"max_batch_size": 4, "max_queue_delay_ms": HOUR_MS, "instances": 1})
    with running_app(repo, drain_delay_s=1.0) as server:

        async def scenario() -> tuple[int, list[httpx.Response]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                first = asyncio.ensure_future(_post(client, photo))
                await asyncio.to_thread(wait_until, lambda: queued(server) == 1, 30, "the first request to queue")
                server.begin_drain()
                readiness = await asyncio.to_thread(
                    wait_until,
                    lambda: (code := httpx.get(f"{server.url}/readyz").status_code) == 503 and code,
                    5,
                    "/readyz to turn 503",
                )
                # still accepted during the drain delay (a balancer may not have noticed yet)
                second = asyncio.ensure_future(_post(client, photo))
                # neither batch fills; when the delay ends, forming batches run instead of waiting an hour
                return readiness, list(await asyncio.gather(first, second))

        readiness, answered = asyncio.run(scenario())
        assert readiness == 503
        assert [r.status_code for r in answered] == [200, 200]
        server.thread.join(60)
        assert not server.thread.is_alive()


def test_refusing_phase_answers_503_shutting_down() -> None:
    from pdserve.errors import ShuttingDown
    from pdserve.lifecycle import Lifecycle

    lifecycle = Lifecycle()
    flushed: list[bool] = []
    lifecycle.on_refuse(lambda: flushed.append(True))
    lifecycle.drain()
    lifecycle.check_accepting()  # draining: still accepting
    assert not lifecycle.ready
    lifecycle.refuse()
    with pytest.raises(ShuttingDown):
        lifecycle.check_accepting()
    assert flushed == [True]
