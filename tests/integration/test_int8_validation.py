"""An INT8 version checked where it loads (issue 18): the shipped model passes its validation set on this
CPU; a copy whose activation scales are broken is refused with the numbers and the ISA, or served
from its FP32 twin and reported degraded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from pdserve.runtime.validation import VALIDATION_FILE
from tests.helpers import DEFAULT_MODEL, MODEL_REPO, ServerThread, metric, running_app, sample_list, wait_until

pytestmark = pytest.mark.timeout(300)
INT8 = MODEL_REPO / f"{DEFAULT_MODEL}_int8"
JPEG = {"Content-Type": "image/jpeg"}

# Every activation scale divided by 20: activations clip at a twentieth of their range.
BREAK_SCALES = """
import sys, numpy as np, paddle
paddle.enable_static()
exe = paddle.static.Executor(paddle.CPUPlace())
src, dst = sys.argv[1], sys.argv[2]
program, feeds, fetches = paddle.static.load_inference_model(src + "/model", exe)
scope = paddle.static.global_scope()
for var in program.list_vars():
    if var.persistable and var.name.endswith("@scale") and ".w_" not in var.name:
        tensor = scope.find_var(var.name).get_tensor()
        tensor.set(np.array(tensor) / 20, paddle.CPUPlace())
block = program.global_block()
paddle.static.save_inference_model(
    dst + "/model", [block.var(n) for n in feeds], fetches, exe, program=program
)
"""


def config(**quantization: object) -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load((INT8 / "config.yaml").read_text())
    doc.update(instances=1, max_batch_size=4, quantization=quantization)
    return doc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = tmp_path_factory.mktemp("repo")
    fp32 = repo / DEFAULT_MODEL
    fp32.mkdir()
    shutil.copy(MODEL_REPO / DEFAULT_MODEL / "config.yaml", fp32)
    (fp32 / "labels.txt").symlink_to(MODEL_REPO / DEFAULT_MODEL / "labels.txt")
    (fp32 / "1").symlink_to(MODEL_REPO / DEFAULT_MODEL / "1", target_is_directory=True)
    broken = tmp_path_factory.mktemp("broken")
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}
    subprocess.run(
        [sys.executable, "-c", BREAK_SCALES, str(INT8 / "1"), str(broken)], check=True, env=env, capture_output=True
    )
    shutil.copy(INT8 / "1" / VALIDATION_FILE, broken)  # the same FP32 reference: the same source model
    models = {
        "int8": (INT8 / "1", config()),
        "int8_broken": (broken, config()),
        "int8_fallback": (broken, config(on_failure="fallback")),
    }
    for name, (version, doc) in models.items():
        (repo / name).mkdir()
        (repo / name / "config.yaml").write_text(yaml.safe_dump(doc))
        (repo / name / "labels.txt").symlink_to(INT8 / "labels.txt")
        (repo / name / "1").symlink_to(version, target_is_directory=True)
    with running_app(repo, ready=False) as s:

        def settled() -> bool:
            states = httpx.get(f"{s.url}/readyz").json()["models"]
            return all(state in ("READY", "DEGRADED", "FAILED") for state in states.values())

        wait_until(settled, 240, "every model to load, fall back or fail")
        yield s


def info(server: ServerThread, name: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{server.url}/models/{name}").json()
    return body


def test_the_shipped_int8_model_passes_where_it_runs(server: ServerThread) -> None:
    model = info(server, "int8")
    assert model["state"] == "READY"
    (check,) = [i["validation"] for v in model["versions"] for i in v["instances"]]  # type: ignore[attr-defined]
    assert check["passed"] is True
    assert check["action"] == "serve"
    assert check["images"] == 32
    assert 1 - check["agreement"] <= check["max_disagreement"]
    print(f"\nshipped INT8 on {check['isa']}: agreement {check['agreement']:.1%}, {check['seconds'] * 1000:.0f} ms")
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "pdserve_int8_validation_agreement", model="int8") == check["agreement"]


def test_broken_scales_are_refused_with_the_numbers_and_the_isa(server: ServerThread) -> None:
    model = info(server, "int8_broken")
    assert model["state"] == "FAILED"
    error = str(model["error"])
    assert "INT8 validation on " in error
    assert "refused (quantization.on_failure: refuse)" in error
    assert "top-1 agrees with FP32 on" in error
    image = sample_list(1)[0][0].read_bytes()
    refused = httpx.post(f"{server.url}/predict?model=int8_broken", content=image, headers=JPEG)
    assert refused.status_code == 503


def test_fallback_serves_fp32_under_the_int8_name_and_says_so(server: ServerThread) -> None:
    model = info(server, "int8_fallback")
    assert model["state"] == "DEGRADED"
    assert "serving the FP32 fallback" in str(model["error"])
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503  # int8_broken is required and failed
    assert any("'int8_fallback' is DEGRADED" in line for line in ready.json()["degraded"])
    image = sample_list(1)[0][0].read_bytes()
    fallback = httpx.post(f"{server.url}/predict?model=int8_fallback", content=image, headers=JPEG, timeout=30)
    fp32 = httpx.post(f"{server.url}/predict?model={DEFAULT_MODEL}", content=image, headers=JPEG, timeout=30)
    assert fallback.status_code == 200
    assert fallback.json()["predictions"] == fp32.json()["predictions"]
    assert metric(httpx.get(f"{server.url}/metrics").text, "pdserve_int8_fallback", model="int8_fallback") == 1


def test_a_model_runs_under_a_restricted_isa_in_a_child_process(tmp_path: Path) -> None:
    """What the search's --isa does for each candidate: the same model, oneDNN limited to SSE4.1."""
    import numpy as np

    from pdserve.pipeline.dataset import Sample, load_images
    from pdserve.pipeline.isa import predict_under
    from pdserve.pipeline.local import LocalModel, predict_timed

    model = LocalModel.open(MODEL_REPO / DEFAULT_MODEL)
    images = load_images([Sample(p, label) for p, label in sample_list(4)], model.config.preprocessing)
    np.save(tmp_path / "images.npy", images)
    here, _ = predict_timed(model, images, 4)
    limited = predict_under("SSE41", model.path, tmp_path / "images.npy", threads=1)
    np.testing.assert_allclose(limited, here, atol=1e-4)  # FP32: the same answers on any ISA
