"""``pdserve convert`` for real: paddle2onnx on a model exported here, the parity check against Paddle,
the INT8 QDQ copy, and the converted model served by ``engine: onnxruntime`` on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pdserve.model_config import load_model_config
from pdserve.runtime.onnx_engine import ONNX_FILE
from pdserve.runtime.predictor_config import LoadedPredictor
from tests.e2e.test_cli import pdserve

pytest.importorskip("paddle2onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(12):
        ok, jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (80 + 5 * i, 90, 3), np.uint8))
        assert ok
        (folder / f"{i}.jpg").write_bytes(jpeg.tobytes())
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "tiny_cnn"
    pdserve("export", "--arch", "tiny_cnn", "--output", out, "--num-classes", "10")
    return out


def test_convert_keeps_a_model_that_matches_paddle(model: Path, images: Path) -> None:
    result = json.loads(pdserve("convert", model, "--data-dir", images, "--json").stdout)
    onnx_file = model / "1" / ONNX_FILE
    assert result["onnx_file"] == str(onnx_file)
    assert onnx_file.is_file()
    assert not (model / "1" / (ONNX_FILE + ".partial")).exists()
    assert result["images"] == 12
    assert result["top1_equal"] == 12
    assert result["max_abs_diff"] < 1e-4
    # a second run refuses to replace it without --force
    again = pdserve("convert", model, "--data-dir", images, ok=False)
    assert again.returncode != 0
    assert "--force" in again.stderr

    config = load_model_config(model)
    batch = np.random.default_rng(1).standard_normal((3, *config.input.shape)).astype(np.float32)
    paddle_out = LoadedPredictor(config, model / "1").run(batch)
    ort = config.model_copy(update={"engine": "onnxruntime"})
    np.testing.assert_allclose(LoadedPredictor(ort, model / "1").run(batch), paddle_out, atol=1e-5)


def test_a_model_that_differs_is_not_kept(model: Path, images: Path) -> None:
    result = pdserve("convert", model, "--data-dir", images, "--force", "--tolerance", "0", ok=False)
    assert result.returncode != 0
    assert "not kept" in result.stderr
    assert not (model / "1" / (ONNX_FILE + ".partial")).exists()
    assert (model / "1" / ONNX_FILE).is_file()  # the one kept before stays


def test_int8_copy_is_a_new_model_folder_served_by_onnxruntime(model: Path, images: Path, tmp_path: Path) -> None:
    if not (model / "1" / ONNX_FILE).is_file():
        pdserve("convert", model, "--data-dir", images)
    out = tmp_path / "tiny_cnn_int8"
    result = json.loads(
        pdserve(
            "convert", model, "--int8-output", out, "--data-dir", images, "--calibration-method", "MinMax", "--json"
        ).stdout
    )
    assert result["images"] == 12
    doc = yaml.safe_load((out / "config.yaml").read_text())
    assert doc["engine"] == "onnxruntime"
    assert doc["precision"] == "int8"
    config = load_model_config(out)
    batch = np.zeros((2, *config.input.shape), np.float32)
    assert LoadedPredictor(config, out / "1").run(batch).shape == (2, 10)
