"""``pdserve collect-shapes`` and ``pdserve build-engines`` for real, on the CPU build: shapes are
collected by a real Paddle predictor; engine building is refused or skipped with its reason, as it
would be on a machine without a CUDA build (no GPU Paddle can run where pdserve is developed)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pdserve.model_config import load_model_config
from pdserve.runtime.predictor_config import SHAPE_FILE, plan_predictor, read_shape_ranges
from tests.e2e.test_cli import pdserve


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(1)
    for i in range(3):
        ok, jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (70, 90 + 10 * i, 3), np.uint8))
        assert ok
        (folder / f"{i}.jpg").write_bytes(jpeg.tobytes())
    return folder


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    pdserve("export", "--arch", "tiny_cnn", "--output", root / "tiny_cnn", "--num-classes", "10")
    return root


def test_collect_shapes_covers_every_batch_size_and_feeds_tuned_mode(repo: Path, images: Path) -> None:
    model = repo / "tiny_cnn"
    config = load_model_config(model)
    result = json.loads(pdserve("collect-shapes", model, "--data-dir", images, "--json").stdout)
    shape_file = model / "1" / SHAPE_FILE
    assert result["shape_file"] == str(shape_file)
    assert result["batch_sizes"][0] == 1
    assert result["batch_sizes"][-1] == config.max_batch_size
    ranges = read_shape_ranges(shape_file)
    assert len(ranges) == result["tensors"] > 1  # the input and the tensors inside the network
    name = config.input.name
    assert ranges[name]["min"] == [1, *config.input.shape]
    assert ranges[name]["max"] == [config.max_batch_size, *config.input.shape]
    assert not list((model / "1").glob("*.partial"))
    # The GPU plan of the same model, in tuned mode, takes the file (the plan is checked; no GPU here).
    tuned = config.model_copy(update={"device": "gpu:0", "tensorrt": config.tensorrt.model_copy(update={
        "enabled": True, "shape_mode": "tuned"})})  # fmt: skip
    plan = plan_predictor(tuned, model / "1", cuda_available=True, model="tiny_cnn")
    assert plan.args("enable_tuned_tensorrt_dynamic_shape") == (str(shape_file), True)


def test_build_engines_skips_cpu_models_and_explains_what_cannot_be_built(repo: Path, tmp_path: Path) -> None:
    result = pdserve("build-engines", "--model-repo", repo, "--json")
    assert json.loads(result.stdout) == [
        {
            "model": "tiny_cnn",
            "version": 1,
            "device": "cpu",
            "status": "skipped",
            "reason": "device cpu: no TensorRT engines to build",
        }
    ]
    gpu_repo = tmp_path / "repo"
    gpu_repo.mkdir()
    (gpu_repo / "tiny_cnn").symlink_to(repo / "tiny_cnn", target_is_directory=True)
    no_cache = pdserve("build-engines", "--model-repo", gpu_repo, "--device", "gpu:0", ok=False)
    assert no_cache.returncode == 2
    assert "no engine cache: set PDSERVE_TRT_CACHE_DIR" in no_cache.stdout
    cached = pdserve(
        "build-engines", "--model-repo", gpu_repo, "--device", "gpu:0", "--cache-dir", tmp_path / "trt", ok=False
    )
    assert cached.returncode == 2
    assert "this Paddle build has no CUDA" in cached.stdout  # the CPU wheel: said, not crashed
    assert "1 of 1 could not be built" in cached.stderr
    assert yaml.safe_load((repo / "tiny_cnn" / "config.yaml").read_text())["device"] == "cpu"  # untouched
