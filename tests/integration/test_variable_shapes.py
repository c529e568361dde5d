"""Tensor models whose shapes change per request (issue 26): outputs of several MB arrive through both
v2 encodings under concurrency, an input the model cannot take is a 400 that names it, and readiness
says so while a model's only worker is hung and being replaced."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
import yaml
from tritonclient.utils import InferenceServerException

from tests.helpers import ServerThread, running_app

pytestmark = [
    pytest.mark.timeout(300),
    # tritonclient's aio client hands aiohttp request bodies over 1 MB as bytes; aiohttp warns.
    pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning"),
]
MODEL = "upsampler"

# big: x upsampled 2x (nearest) times a weight of 2; detail: x + upsample(avg_pool(x)), which only
# even sides can take (Paddle raises InvalidArgument otherwise, as PP-OCR's detector does off /32).
EXPORT = """
import sys, paddle
import paddle.nn.functional as F
from paddle.static import InputSpec

class Upsampler(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.scale = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(2.0))

    def forward(self, x):
        big = F.interpolate(x, scale_factor=2, mode="nearest") * self.scale
        detail = x + F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        return big, detail

net = Upsampler()
net.eval()
paddle.jit.save(net, sys.argv[1] + "/model", input_spec=[InputSpec([None, 3, None, None], "float32", "x")])
"""


def expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    big = x.repeat(2, axis=2).repeat(2, axis=3) * 2
    n, c, h, w = x.shape
    pooled = x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    return big, x + pooled.repeat(2, axis=2).repeat(2, axis=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = tmp_path_factory.mktemp("repo")
    version = repo / MODEL / "1"
    version.mkdir(parents=True)
    script = repo / "export.py"  # a file: paddle.jit.save reads forward()'s source
    script.write_text(EXPORT)
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}
    subprocess.run([sys.executable, str(script), str(version)], check=True, env=env, capture_output=True)
    script.unlink()
    config = {"kind": "tensor", "instances": 2, "max_batch_size": 4, "max_queue_delay_ms": 2}
    (repo / MODEL / "config.yaml").write_text(yaml.safe_dump(config))
    with running_app(repo) as s:
        yield s


def tensor(x: np.ndarray, binary: bool) -> list[triton.InferInput]:
    t = triton.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=binary)
    return [t]


def instances(server: ServerThread) -> list[dict[str, object]]:
    info = httpx.get(f"{server.url}/models/{MODEL}").json()
    return [i for v in info["versions"] for i in v["instances"]]


def test_large_outputs_of_every_shape_arrive_under_concurrency(server: ServerThread) -> None:
    # Outputs from 0.1 MB to 4.9 MB (side 320: big is [1, 3, 640, 640]); the hang was at about 1.6 MB.
    sides = [32, 96, 160, 224, 256, 320, 200, 288]
    rng = np.random.default_rng(0)

    async def round_trip() -> None:
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            xs = [rng.random((1 + i % 2, 3, s, s), dtype=np.float32) for i, s in enumerate(sides)]
            binary = [i % 4 != 0 for i in range(len(xs))]  # every fourth one JSON
            results = await asyncio.gather(
                *(client.infer(MODEL, tensor(x, b)) for x, b in zip(xs, binary, strict=True))
            )
            for x, result in zip(xs, results, strict=True):
                big, detail = expected(x)
                np.testing.assert_allclose(result.as_numpy("tmp_0"), big, rtol=1e-6)
                np.testing.assert_allclose(result.as_numpy("tmp_1"), detail, rtol=1e-5, atol=1e-6)
        finally:
            await client.close()

    for _ in range(5):
        asyncio.run(round_trip())
    assert all(i["restarts"] == 0 and i["state"] == "READY" for i in instances(server))


def test_an_input_the_model_cannot_take_is_a_400_that_names_it(server: ServerThread) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        odd = np.ones((1, 3, 33, 32), np.float32)
        with pytest.raises(InferenceServerException) as refused:
            client.infer(MODEL, tensor(odd, True))
        assert refused.value.status() == "400"
        message = str(refused.value)
        assert "x [1, 3, 33, 32] float32" in message
        assert "Broadcast dimension mismatch" in message
        assert "(at " not in message
        assert "[Hint" not in message
        body = httpx.post(
            f"{server.url}/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": "x", "shape": [1, 3, 2, 3], "datatype": "FP32", "data": [0.0] * 18}]},
        )
        assert body.status_code == 400
        assert isinstance(body.json()["error"], str)  # v2's own error shape: {"error": "..."}
        assert "x [1, 3, 2, 3]" in body.json()["error"]
        good = np.ones((1, 3, 32, 32), np.float32)
        assert client.infer(MODEL, tensor(good, True)).as_numpy("tmp_0").shape == (1, 3, 64, 64)
    finally:
        client.close()
    assert all(i["restarts"] == 0 for i in instances(server))  # the worker answered: nothing restarted


def test_a_refused_input_fails_alone_in_its_batch(server: ServerThread) -> None:
    async def mixed() -> list[object]:
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            xs = [
                np.ones((1, 3, 8, 8), np.float32),
                np.ones((1, 3, 9, 8), np.float32),
                np.ones((1, 3, 8, 8), np.float32),
            ]
            results = await asyncio.gather(*(client.infer(MODEL, tensor(x, True)) for x in xs), return_exceptions=True)
            return list(results)
        finally:
            await client.close()

    first, bad, last = asyncio.run(mixed())
    assert isinstance(bad, InferenceServerException)
    assert bad.status() == "400"
    for ok in (first, last):
        assert isinstance(ok, triton.InferResult)
        assert ok.as_numpy("tmp_0").shape == (1, 3, 16, 16)


def test_readiness_is_false_while_the_only_worker_is_hung_and_replaced(
    tmp_path_factory: pytest.TempPathFactory, server: ServerThread
) -> None:
    repo = tmp_path_factory.mktemp("one")
    (repo / MODEL).mkdir()
    (repo / MODEL / "1").symlink_to(server.app.state.service.settings.model_repo / MODEL / "1")
    config = {"kind": "tensor", "instances": 1, "max_batch_size": 1, "compute_timeout_ms": 2000}
    (repo / MODEL / "config.yaml").write_text(yaml.safe_dump(config))
    with running_app(repo) as one:
        (worker,) = instances(one)
        pid = worker["pid"]
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGSTOP)  # a worker stuck inside Paddle: alive, answering nothing
        try:
            x = np.ones((1, 3, 8, 8), np.float32)
            hung = httpx.post(
                f"{one.url}/v2/models/{MODEL}/infer",
                json={
                    "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
                },
                timeout=30,
            )
        finally:
            with contextlib.suppress(ProcessLookupError):  # killed as hung, as it should be
                os.kill(pid, signal.SIGCONT)
        assert hung.status_code == 503
        assert "did not finish this batch" in hung.json()["error"]
        # The replacement is still starting: nothing serves this model, and every endpoint says so.
        assert httpx.get(f"{one.url}/readyz").status_code == 503
        assert httpx.get(f"{one.url}/models/{MODEL}/ready").status_code == 503
        assert httpx.get(f"{one.url}/v2/models/{MODEL}/ready").status_code == 503
        assert httpx.get(f"{one.url}/v2/health/ready").status_code == 503
        # ... until a replacement has answered or one compute timeout has passed since the hang.
        one.wait_ready(60)
        answer = httpx.post(
            f"{one.url}/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]},
            timeout=30,
        )
        assert answer.status_code == 200
        (replacement,) = instances(one)
        assert replacement["pid"] != pid
        assert replacement["restarts"] == 1
        assert replacement["healthy"] is True
