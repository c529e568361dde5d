"""Any Paddle inference model served as tensors over v2: a small multi-input model exported here,
its inputs and outputs read from the model itself, requests batched on the first dimension."""

from __future__ import annotations

import asyncio
import os
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

from tests.helpers import ServerThread, metric, running_app

pytestmark = pytest.mark.timeout(240)
MODEL = "detector"
HOUR_MS = 3_600_000

EXPORT = """
import sys, paddle
from paddle.static import InputSpec

class Detector(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        paddle.seed(0)
        self.fc = paddle.nn.Linear(3, 4)

    def forward(self, image, im_shape, scale_factor):
        boxes = self.fc(image.mean(axis=[2, 3])) * scale_factor.tile([1, 2])
        return boxes, im_shape.astype("int64") * 2

net = Detector()
net.eval()
specs = [
    InputSpec([None, 3, None, None], "float32", "image"),
    InputSpec([None, 2], "float32", "im_shape"),
    InputSpec([None, 2], "float32", "scale_factor"),
]
paddle.jit.save(net, sys.argv[1] + "/model", input_spec=specs)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = tmp_path_factory.mktemp("repo")
    version = repo / MODEL / "1"
    version.mkdir(parents=True)
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}  # the legacy model.pdmodel format pdserve serves
    script = repo / "export_detector.py"  # a file: paddle.jit.save reads forward()'s source
    script.write_text(EXPORT)
    subprocess.run([sys.executable, str(script), str(version)], check=True, env=env, capture_output=True)
    script.unlink()
    config = {"kind": "tensor", "instances": 1, "max_batch_size": 3, "max_queue_delay_ms": HOUR_MS}
    (repo / MODEL / "config.yaml").write_text(yaml.safe_dump(config))
    with running_app(repo) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()


def feeds(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((n, 3, 8, 8), dtype=np.float32),
        "im_shape": np.full((n, 2), seed, np.float32),
        "scale_factor": np.ones((n, 2), np.float32),
    }


def inputs(values: dict[str, np.ndarray], binary: bool = True) -> list[triton.InferInput]:
    out = []
    for name, array in values.items():
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        out.append(tensor)
    return out


def test_inputs_and_outputs_come_from_the_model(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]},
        {"name": "im_shape", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "scale_factor", "datatype": "FP32", "shape": [-1, 2]},
    ]
    assert [(o["datatype"], o["shape"]) for o in meta["outputs"]] == [("FP32", [-1, 4]), ("INT64", [-1, 2])]
    config = client.get_model_config(MODEL)
    assert [i["name"] for i in config["input"]] == ["image", "im_shape", "scale_factor"]


def test_concurrent_requests_share_a_batch_and_each_gets_its_own_rows(
    client: triton.InferenceServerClient, server: ServerThread
) -> None:
    boxes_name, shape_name = (o["name"] for o in client.get_model_metadata(MODEL)["outputs"])
    before = httpx.get(f"{server.url}/metrics").text

    async def three() -> list[dict[str, np.ndarray]]:
        c = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            requests = [feeds(1, 5), feeds(2, 7), feeds(1, 9)]  # 3 requests fill the batch of 3
            results = await asyncio.gather(*(c.infer(MODEL, inputs(r)) for r in requests))
            return [{n: res.as_numpy(n) for n in (boxes_name, shape_name)} for res in results]
        finally:
            await c.close()

    results = asyncio.run(three())
    after = httpx.get(f"{server.url}/metrics").text
    assert (
        metric(after, "pdserve_batch_size_count", model=MODEL) - metric(before, "pdserve_batch_size_count", model=MODEL)
        == 1
    )
    for result, (rows, seed) in zip(results, [(1, 5), (2, 7), (1, 9)], strict=True):
        assert result[shape_name].dtype == np.int64
        assert result[shape_name].tolist() == [[2 * seed, 2 * seed]] * rows  # its own rows, in order
        assert result[boxes_name].shape == (rows, 4)


def test_json_tensors_and_errors(client: triton.InferenceServerClient, server: ServerThread) -> None:
    # A batch of 3 closes only when full: three JSON requests together.
    async def three() -> list[np.ndarray]:
        c = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            results = await asyncio.gather(*(c.infer(MODEL, inputs(feeds(1, s), binary=False)) for s in (1, 2, 3)))
            name = client.get_model_metadata(MODEL)["outputs"][1]["name"]
            return [r.as_numpy(name) for r in results]
        finally:
            await c.close()

    assert [r.tolist() for r in asyncio.run(three())] == [[[2, 2]], [[4, 4]], [[6, 6]]]
    missing = {k: v for k, v in feeds(1, 1).items() if k != "scale_factor"}
    with pytest.raises(InferenceServerException, match=r"missing \['scale_factor'\]") as refused:
        client.infer(MODEL, inputs(missing))
    assert refused.value.status() == "400"
    wrong_type = triton.InferInput("image", [1, 3, 8, 8], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 3, 8, 8)))
    with pytest.raises(InferenceServerException, match="the model takes float32"):
        client.infer(MODEL, [wrong_type, *inputs(missing)[1:], *inputs(feeds(1, 1))[2:]])
    wrong_shape = {**feeds(1, 1), "im_shape": np.zeros((1, 3), np.float32)}
    with pytest.raises(InferenceServerException, match="has shape"):
        client.infer(MODEL, inputs(wrong_shape))
    rest = httpx.post(f"{server.url}/predict?model={MODEL}", content=b"x", headers={"Content-Type": "image/jpeg"})
    assert rest.status_code == 400
    assert "/v2/models/detector/infer" in rest.json()["error"]["message"]
