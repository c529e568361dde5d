"""KServe v2 / Open Inference Protocol with the real tritonclient (sync and aio), unchanged."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from pdserve.model_config import load_model_config
from pdserve.preprocess import load_and_preprocess
from tests.helpers import DEFAULT_MODEL, MODEL_REPO, ServerThread, make_repo, running_app, sample_list

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = make_repo(tmp_path_factory.mktemp("repo"), {"instances": 1})
    with running_app(repo) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=120)
    yield c
    c.close()


@pytest.fixture(scope="module")
def photos() -> list[tuple[bytes, int]]:
    return [(p.read_bytes(), label) for p, label in sample_list(3)]


def image_input(images: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:  # JSON cannot carry raw bytes: base64 strings
        encoded = [base64.b64encode(i).decode() for i in images]
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return tensor


def test_health_metadata_ready_config(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(DEFAULT_MODEL)
    assert client.is_model_ready(DEFAULT_MODEL, "1")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "pdserve"
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(DEFAULT_MODEL)
    assert meta["versions"] == ["1"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "BYTES", "x": "FP32"}
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, 1000]
    config = client.get_model_config(DEFAULT_MODEL)
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["preferred_batch_size"] == [1, 2, 4, 8]


def test_an_image_in_binary_gives_the_same_answer_as_predict(
    client: triton.InferenceServerClient, server: ServerThread, photos: list[tuple[bytes, int]]
) -> None:
    images = [p for p, _ in photos]
    result = client.infer(
        DEFAULT_MODEL,
        [image_input(images)],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)],
        request_id="req-42",
    )
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 1000)
    assert probs.dtype == np.float32
    assert result.get_response()["id"] == "req-42"
    for (image, label), row in zip(photos, probs, strict=True):
        rest = httpx.post(
            f"{server.url}/predict?top_k=1", content=image, headers={"Content-Type": "image/jpeg"}, timeout=60
        ).json()
        assert int(row.argmax()) == rest["predictions"][0]["class_id"] == label
        assert float(row.max()) == pytest.approx(rest["predictions"][0]["score"], abs=1e-6)


def test_json_tensors_and_classification(client: triton.InferenceServerClient, photos: list[tuple[bytes, int]]) -> None:
    images = [p for p, _ in photos]
    result = client.infer(
        DEFAULT_MODEL,
        [image_input(images, binary=False)],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=False, class_count=3)],
    )
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 3)
    first = top[0][0]  # JSON BYTES come back as str, binary ones as bytes
    score, index, label = (first.decode() if isinstance(first, bytes) else first).split(":", 2)
    assert int(index) == photos[0][1]
    assert 0 < float(score) <= 1
    assert label  # the model has labels


def test_preprocessed_fp32_tensors_match_encoded_images(
    client: triton.InferenceServerClient, photos: list[tuple[bytes, int]]
) -> None:
    spec = load_model_config(MODEL_REPO / DEFAULT_MODEL).preprocessing
    batch = np.stack([load_and_preprocess(p, spec, 10**8) for p, _ in photos])
    tensor = triton.InferInput("x", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    from_tensors = client.infer(DEFAULT_MODEL, [tensor]).as_numpy("probabilities")
    from_images = client.infer(DEFAULT_MODEL, [image_input([p for p, _ in photos])]).as_numpy("probabilities")
    assert np.allclose(from_tensors, from_images, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(
    client: triton.InferenceServerClient, photos: list[tuple[bytes, int]], algorithm: str
) -> None:
    result = client.infer(
        DEFAULT_MODEL,
        [image_input([photos[0][0]])],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert int(result.as_numpy("probabilities")[0].argmax()) == photos[0][1]


def test_the_aio_client_works_too(server: ServerThread, photos: list[tuple[bytes, int]]) -> None:
    async def run() -> tuple[np.ndarray, bool, dict[str, object]]:
        c = triton_aio.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        try:
            ready = await c.is_model_ready(DEFAULT_MODEL)
            result = await c.infer(
                DEFAULT_MODEL,
                [image_input([p for p, _ in photos])],
                request_compression_algorithm="gzip",
                response_compression_algorithm="deflate",
            )
            stats = await c.get_inference_statistics(DEFAULT_MODEL)
            return result.as_numpy("probabilities"), ready, stats
        finally:
            await c.close()

    probs, ready, stats = asyncio.run(run())
    assert ready
    assert [int(r.argmax()) for r in probs] == [label for _, label in photos]
    model = stats["model_stats"][0]  # type: ignore[index]
    assert model["name"] == DEFAULT_MODEL
    assert model["inference_count"] >= 3
    assert model["inference_stats"]["success"]["count"] >= 1
    assert model["inference_stats"]["compute_infer"]["ns"] > 0


def test_errors_in_the_protocols_shape(client: triton.InferenceServerClient, server: ServerThread) -> None:
    with pytest.raises(InferenceServerException) as unknown_model:
        client.infer("nope", [image_input([b"x"])])
    assert unknown_model.value.status() == "404"
    bad_input = triton.InferInput("pixels", [1], "FP32")
    bad_input.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(InferenceServerException, match="unknown input 'pixels'") as unknown_input:
        client.infer(DEFAULT_MODEL, [bad_input])
    assert unknown_input.value.status() == "400"
    wrong_shape = triton.InferInput("x", [1, 3, 10, 10], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3, 10, 10), np.float32))
    with pytest.raises(InferenceServerException, match="does not match"):
        client.infer(DEFAULT_MODEL, [wrong_shape])
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["not base64!"], dtype=np.object_), binary_data=False)
    with pytest.raises(InferenceServerException, match="base64"):
        client.infer(DEFAULT_MODEL, [tensor])
    with pytest.raises(InferenceServerException, match="cannot decode image"):
        client.infer(DEFAULT_MODEL, [image_input([b"corrupt"])])
    raw = httpx.post(f"{server.url}/v2/models/{DEFAULT_MODEL}/infer", content=b"{not json")
    assert raw.status_code == 400
    assert set(raw.json()) == {"error", "request_id"}  # the id, as in X-Request-ID; tritonclient reads "error"
    nope = httpx.get(f"{server.url}/v2/nope")
    assert nope.json() == {"error": "Not Found", "request_id": nope.headers["x-request-id"]}


def test_the_timeout_parameter_feeds_the_deadline(
    client: triton.InferenceServerClient, photos: list[tuple[bytes, int]]
) -> None:
    # 1 microsecond cannot be met: refused at admission or answered 504, never run and never a hang
    with pytest.raises(InferenceServerException) as refused:
        client.infer(DEFAULT_MODEL, [image_input([photos[0][0]])], timeout=1)
    assert refused.value.status() in ("429", "504")


def test_binary_request_with_a_lying_header_is_refused(server: ServerThread) -> None:
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 99}}]}
    ).encode()
    r = httpx.post(
        f"{server.url}/v2/models/{DEFAULT_MODEL}/infer",
        content=header + b"\0" * 10,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400
    assert "binary_data_size" in r.json()["error"]
