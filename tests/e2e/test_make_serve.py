"""The server started exactly as the README says (``make serve``), driven by real HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import DEFAULT_MODEL, ROOT, free_port, make_repo, metric, sample_list, sample_split, wait_until

pytestmark = pytest.mark.timeout(600)
JPEG = {"Content-Type": "image/jpeg"}


class MakeServe:
    """``make serve`` in its own process group; stopped (and checked stopped) by the test."""

    def __init__(
        self, log: Path, repo: Path | None = None, env: dict[str, str] | None = None, direct: bool = False
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["make", "--no-print-directory", "serve", "HOST=127.0.0.1", f"PORT={self.port}"]
        if repo is not None:
            args.append(f"MODEL_REPO={repo}")
        if direct:  # the command make runs, without make in between (to see its own exit status)
            args = [str(ROOT / ".venv/bin/pdserve"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
            args += ["--model-repo", str(repo or ROOT / "model_repo")]
        self.log_path = log
        self._log = log.open("wb")
        env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"} | (env or {})
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        self.pgid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 300) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"make serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout, f"make serve on port {self.port} to become ready", interval=0.25)

    def group_alive(self) -> bool:
        """Any live (not zombie) process left in the server's process group?"""
        self.proc.poll()  # reap make itself
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.pgid and fields[0] != "Z":
                return True
        return False

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> None:
        if self.group_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)
        try:
            wait_until(lambda: not self.group_alive(), timeout, "the server's processes to exit", interval=0.1)
        finally:
            if self.group_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
            self.proc.wait(10)
            self._log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeServe]:
    server = MakeServe(tmp_path_factory.mktemp("logs") / "serve.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
    assert "Application shutdown complete" in server.log()


def test_make_serve_classifies_real_photos(served: MakeServe) -> None:
    rows = sample_list()[:3]
    for path, label in rows:
        r = httpx.post(f"{served.url}/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == DEFAULT_MODEL
        assert r.json()["predictions"][0]["class_id"] == label


async def _classify_all(
    url: str, rows: list[tuple[Path, int]], concurrency: int, model: str = DEFAULT_MODEL
) -> list[int]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(data: bytes) -> int:
            async with limit:
                params: dict[str, str | int] = {"top_k": 1, "model": model}
                r = await client.post("/predict", content=data, headers=JPEG, params=params)
                assert r.status_code == 200, r.text
                return int(r.json()["predictions"][0]["class_id"])

        return await asyncio.gather(*(one(p.read_bytes()) for p, _ in rows))


def test_concurrent_requests_are_batched(served: MakeServe) -> None:
    before = httpx.get(f"{served.url}/metrics").text
    rows = sample_list()[:32]
    predicted = asyncio.run(_classify_all(served.url, rows, concurrency=32))
    assert len(predicted) == 32
    after = httpx.get(f"{served.url}/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, model=DEFAULT_MODEL, **labels) - metric(before, name, model=DEFAULT_MODEL, **labels)

    batches = delta("pdserve_batch_size_count")
    singles = delta("pdserve_batch_size_bucket", le="1.0")
    assert delta("pdserve_batch_size_sum") == 32
    assert batches - singles >= 1, f"{batches} batches, all of size 1"
    assert batches < 32


def test_top1_accuracy_through_the_api(served: MakeServe) -> None:
    # The report split: images that neither calibrated the INT8 model nor chose its recipe.
    rows = sample_split("report")
    assert len(rows) == 150
    top1 = {}
    for model in (DEFAULT_MODEL, f"{DEFAULT_MODEL}_int8"):
        predicted = asyncio.run(_classify_all(f"{served.url}", rows, concurrency=8, model=model))
        correct = sum(p == label for p, (_, label) in zip(predicted, rows, strict=True))
        top1[model] = correct / len(rows)
        print(f"\n{model} through the HTTP API: top-1 {top1[model]:.1%} ({correct}/{len(rows)})")
    assert top1[DEFAULT_MODEL] >= 0.85
    # What the shipped INT8 model promises wherever it runs (its recipe was chosen under AVX2, the
    # weakest INT8 kernels, and on this CPU's own ISA): within 0.5 point of FP32 on images that chose
    # nothing; one image is 0.67 points of 150, so the guard is one image.
    assert top1[f"{DEFAULT_MODEL}_int8"] >= top1[DEFAULT_MODEL] - 0.007
    # ... and every worker checked it here against FP32 before serving it.
    info = httpx.get(f"{served.url}/models/{DEFAULT_MODEL}_int8").json()
    checks = [i["validation"] for v in info["versions"] for i in v["instances"]]
    assert checks
    assert all(c["passed"] and c["action"] == "serve" for c in checks), checks
    print(f"validation at load on {checks[0]['isa']}: agreement {checks[0]['agreement']:.1%}")


def test_sigterm_drains_queued_requests_then_exits(tmp_path: Path) -> None:
    # Batches wait 3 s for company, so the two requests are still queued when SIGTERM arrives.
    repo = make_repo(tmp_path / "repo", {"max_queue_delay_ms": 3000})
    server = MakeServe(tmp_path / "serve.log", repo)
    try:
        server.wait_ready()
        info = httpx.get(f"{server.url}/models/{DEFAULT_MODEL}").json()
        worker_pids = [i["pid"] for v in info["versions"] for i in v["instances"]]
        images = [p.read_bytes() for p, _ in sample_list(2)]

        async def drain() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                tasks = [asyncio.ensure_future(client.post("/predict", content=b, headers=JPEG)) for b in images]
                await asyncio.to_thread(
                    wait_until,
                    lambda: (
                        metric(httpx.get(f"{server.url}/metrics").text, "pdserve_queue_depth", model=DEFAULT_MODEL) == 2
                    ),
                    30,
                    "both requests to queue",
                )
                os.killpg(server.pgid, signal.SIGTERM)  # as Ctrl-C or a container stop would
                return list(await asyncio.gather(*tasks))

        responses = asyncio.run(drain())
        assert [r.status_code for r in responses] == [200, 200]
        wait_until(lambda: not server.group_alive(), 60, "the server to exit after draining")
        assert all(not Path(f"/proc/{pid}").exists() for pid in worker_pids)
        assert "Application shutdown complete" in server.log()
    finally:
        server.stop()


def test_sigterm_turns_readiness_off_keeps_serving_through_the_drain_delay_and_exits_0(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"max_queue_delay_ms": 0})
    server = MakeServe(tmp_path / "serve.log", repo, env={"PDSERVE_DRAIN_DELAY_S": "2"}, direct=True)
    try:
        server.wait_ready()
        image = sample_list(1)[0][0].read_bytes()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.post("/predict", content=image, headers=JPEG).status_code == 200
            os.kill(server.proc.pid, signal.SIGTERM)
            readiness = wait_until(
                lambda: (code := client.get("/readyz").status_code) == 503 and code, 5, "/readyz to turn 503"
            )
            assert readiness == 503
            # within the drain delay requests are still served, on this connection and on new ones
            assert client.post("/predict", content=image, headers=JPEG).status_code == 200
            assert httpx.post(f"{server.url}/predict", content=image, headers=JPEG, timeout=60).status_code == 200
        assert server.proc.wait(60) == 0  # a handled SIGTERM is a clean exit, not 143
        assert "Application shutdown complete" in server.log()
    finally:
        server.stop()


def test_json_logs_follow_a_request_by_its_id(tmp_path: Path) -> None:
    """``pdserve serve`` with PDSERVE_LOG_FORMAT=json: every line is JSON; the id a client sends comes
    back in the response and in the request's access line; worker start-up is a structured event."""
    server = MakeServe(
        tmp_path / "serve.log", make_repo(tmp_path, {"instances": 1}), {"PDSERVE_LOG_FORMAT": "json"}, direct=True
    )
    try:
        server.wait_ready()
        photo = sample_list(1)[0][0].read_bytes()
        r = httpx.post(f"{server.url}/predict", content=photo, headers={**JPEG, "X-Request-ID": "trace-7"})
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "trace-7"
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    (access,) = [doc for doc in lines if doc.get("request_id") == "trace-7" and doc["logger"] == "pdserve.access"]
    assert access["status"] == 200
    assert access["model"] == DEFAULT_MODEL
    assert access["images"] == 1
    assert {"admission_ms", "queue_ms", "compute_ms", "total_ms", "batch_size"} <= access.keys()
    events = {doc.get("event") for doc in lines}
    assert {"worker_started", "version_ready"} <= events
