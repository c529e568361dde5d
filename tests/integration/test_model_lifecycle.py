"""Loading, reloading and unloading models on a running server (Triton's repository extension),
and the keys that guard it. Real workers, a real uvicorn, tritonclient for the management calls."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from tests.helpers import (
    DEFAULT_MODEL,
    MODEL_REPO,
    ServerThread,
    make_repo,
    running_app,
    sample_list,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)
KEY = "test-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JPEG = {"Content-Type": "image/jpeg"}
HOUR_MS = 3_600_000


def versions(server: ServerThread) -> dict[int, dict[str, object]]:
    info = httpx.get(f"{server.url}/models/{DEFAULT_MODEL}").json()
    return {v["version"]: v for v in info["versions"]}


def add_version(repo: Path, number: int) -> None:
    (repo / DEFAULT_MODEL / str(number)).symlink_to(MODEL_REPO / DEFAULT_MODEL / "1", target_is_directory=True)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_new_version_is_loaded_under_load_with_no_failed_request(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"instances": 1, "max_queue_delay_ms": 0})
    image = sample_list(1)[0][0].read_bytes()
    with running_app(repo, admin_key=KEY) as server:
        old_pids = [i["pid"] for i in versions(server)[1]["instances"]]  # type: ignore[attr-defined]
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=300)

        async def scenario() -> list[httpx.Response]:
            responses: list[httpx.Response] = []
            done = asyncio.Event()
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:

                async def closed_loop() -> None:
                    while not done.is_set():
                        responses.append(await http.post("/predict", content=image, headers=JPEG))

                clients = [asyncio.ensure_future(closed_loop()) for _ in range(4)]
                await asyncio.sleep(1)
                add_version(repo, 2)
                await asyncio.to_thread(client.load_model, DEFAULT_MODEL, headers=AUTH)
                served_before = len(responses)
                await asyncio.sleep(1)  # traffic goes on, now to version 2
                done.set()
                await asyncio.gather(*clients)
                assert len(responses) > served_before
            return responses

        responses = asyncio.run(scenario())
        client.close()
        assert responses
        assert [r.status_code for r in responses if r.status_code != 200] == []
        assert {r.json()["version"] for r in responses} == {1, 2}
        assert list(versions(server)) == [2]  # versions: latest
        wait_until(lambda: not any(alive(p) for p in old_pids), 30, "version 1's workers to exit")


def test_a_load_that_fails_leaves_the_serving_version_untouched(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"instances": 1})
    image = sample_list(1)[0][0].read_bytes()
    with running_app(repo, admin_key=KEY) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        config = repo / DEFAULT_MODEL / "config.yaml"
        good = config.read_text()
        config.write_text(yaml.safe_dump({**yaml.safe_load(good), "max_batch_size": 0}))
        with pytest.raises(InferenceServerException, match="max_batch_size") as failed:
            client.load_model(DEFAULT_MODEL, headers=AUTH)
        assert failed.value.status() == "400"
        assert httpx.post(f"{server.url}/predict", content=image, headers=JPEG, timeout=60).status_code == 200
        assert client.is_model_ready(DEFAULT_MODEL)
        config.write_text(good)
        client.close()


def test_unload_answers_what_it_holds_then_404_and_load_brings_it_back(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"instances": 1, "max_batch_size": 4, "max_queue_delay_ms": HOUR_MS})
    image = sample_list(1)[0][0].read_bytes()
    with running_app(repo, admin_key=KEY) as server:
        pids = [i["pid"] for i in versions(server)[1]["instances"]]  # type: ignore[attr-defined]

        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                held = asyncio.ensure_future(http.post("/predict", content=image, headers=JPEG))
                await asyncio.to_thread(
                    wait_until,
                    lambda: httpx.get(f"{server.url}/metrics").text.count(
                        'pdserve_queue_depth{model="efficientnet_lite0"} 1.0'
                    ),
                    30,
                    "the request to wait for company in its batch",
                )
                unloaded = await http.post(f"/v2/repository/models/{DEFAULT_MODEL}/unload", headers=AUTH)
                return await held, unloaded

        held, unloaded = asyncio.run(scenario())
        assert unloaded.status_code == 200
        assert held.status_code == 200  # the batch it waited in ran, instead of waiting an hour
        assert httpx.post(f"{server.url}/predict?model={DEFAULT_MODEL}", content=image, headers=JPEG).status_code == 404
        wait_until(lambda: not any(alive(p) for p in pids), 30, "the workers to exit")
        index = httpx.post(f"{server.url}/v2/repository/index", headers=AUTH).json()
        assert index == [{"name": DEFAULT_MODEL, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}]
        load = f"{server.url}/v2/repository/models/{DEFAULT_MODEL}/load"
        assert httpx.post(load, headers=AUTH, timeout=300).status_code == 200
        assert httpx.get(f"{server.url}/v2/models/{DEFAULT_MODEL}/ready").status_code == 200
        assert versions(server)[1]["state"] == "READY"


def test_management_needs_the_admin_key(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"instances": 1})
    key_file = tmp_path / "admin-key"
    key_file.write_text(KEY + "\n")  # as a mounted Kubernetes Secret
    with running_app(repo, ready=False) as open_server:
        r = httpx.post(f"{open_server.url}/v2/repository/index")
        assert r.status_code == 403
        assert "disabled" in r.json()["error"]
    with running_app(repo, ready=False, admin_key_file=key_file) as server:
        url = f"{server.url}/v2/repository/index"
        missing = httpx.post(url)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert set(missing.json()) == {"error", "request_id"}
        assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(url, headers=AUTH).status_code == 200
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        assert client.get_model_repository_index(headers=AUTH)[0]["name"] == DEFAULT_MODEL
        client.close()
        for path in ("/metrics", "/healthz", "/v2/health/live"):
            assert httpx.get(f"{server.url}{path}").status_code == 200


def test_an_api_key_guards_inference_only(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"instances": 1})
    image = sample_list(1)[0][0].read_bytes()
    with running_app(repo, api_key="infer-key") as server:
        refused = httpx.post(f"{server.url}/predict", content=image, headers=JPEG)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        ok = httpx.post(
            f"{server.url}/predict", content=image, headers={**JPEG, "Authorization": "Bearer infer-key"}, timeout=60
        )
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_errors_show_no_paths_or_pids_without_the_admin_key(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    broken = repo / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("max_batch_size: 0\n")
    with running_app(repo, ready=False, admin_key=KEY) as server:
        good = f"{server.url}/models/{DEFAULT_MODEL}/ready"
        wait_until(lambda: httpx.get(good).status_code == 200, 120, "the good model to serve")
        public = httpx.post(f"{server.url}/predict?model=broken", content=b"x", headers=JPEG).json()["error"]["message"]
        assert str(tmp_path) not in public
        assert "broken/config.yaml" in public  # named relative to the repository
        admin = httpx.post(f"{server.url}/predict?model=broken", content=b"x", headers={**JPEG, **AUTH}).json()
        assert str(repo) in admin["error"]["message"]
        ready = httpx.get(f"{server.url}/readyz").json()  # 503: 'broken' is required, and failed
        assert ready["reasons"]
        assert not any(str(tmp_path) in line for line in ready["reasons"])


def test_polling_loads_a_new_version_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"instances": 1})
    with running_app(repo, repository_poll_s=0.5) as server:
        add_version(repo, 2)
        wait_until(lambda: list(versions(server)) == [2] and versions(server)[2]["state"] == "READY", 120, "version 2")
        os.unlink(repo / DEFAULT_MODEL / "2")
        wait_until(lambda: list(versions(server)) == [1], 120, "back to version 1")


def _tree_rss_mib(pid: int) -> float:
    from pdserve.pipeline.bench import rss_mib

    # children of every thread: the server runs in a thread of this process, and spawns from it
    children = {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}
    return rss_mib(pid) + sum(rss_mib(c) for c in children)


def test_twenty_unload_load_cycles_do_not_grow_memory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"instances": 1})
    with running_app(repo, admin_key=KEY) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=300)
        client.unload_model(DEFAULT_MODEL, headers=AUTH)
        client.load_model(DEFAULT_MODEL, headers=AUTH)  # the first cycle warms allocator and imports
        first = _tree_rss_mib(os.getpid())
        for _ in range(19):
            client.unload_model(DEFAULT_MODEL, headers=AUTH)
            client.load_model(DEFAULT_MODEL, headers=AUTH)
        assert client.is_model_ready(DEFAULT_MODEL)
        last = _tree_rss_mib(os.getpid())
        client.close()
        print(f"\nserver (this process) and its workers: {first:.0f} MiB after cycle 1, {last:.0f} MiB after 20")
        assert last < first * 1.05, (first, last)
