"""What a model config decides for Paddle Inference, GPU/TensorRT included, checked on the CPU build."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import ModelLoadError
from app.model_config import ModelConfig
from app.runtime.predictor_config import Precision, plan_predictor


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.pdmodel").write_bytes(b"")
    (tmp_path / "model.pdiparams").write_bytes(b"")
    return tmp_path


def test_cpu_fp32_uses_onednn_with_the_configured_threads(version_dir: Path) -> None:
    plan = plan_predictor(ModelConfig(cpu_threads=3), version_dir, cuda_available=False)
    assert plan.methods() == [
        "disable_glog_info",
        "switch_ir_optim",
        "enable_memory_optim",
        "disable_gpu",
        "set_cpu_math_library_num_threads",
        "enable_mkldnn",
    ]
    assert plan.args("set_cpu_math_library_num_threads") == (3,)


@pytest.mark.parametrize(("precision", "openvino_precision"), [("fp32", "Float32"), ("int8", "Int8")])
def test_cpu_openvino_engine_replaces_onednn(version_dir: Path, precision: str, openvino_precision: str) -> None:
    config = ModelConfig(engine="openvino", precision=precision, cpu_threads=2)
    plan = plan_predictor(config, version_dir, cuda_available=False)
    assert plan.args("enable_openvino_engine") == (Precision(openvino_precision),)
    assert not {"enable_mkldnn", "enable_mkldnn_int8"} & set(plan.methods())
    assert plan.args("set_cpu_math_library_num_threads") == (2,)


def test_openvino_engine_is_cpu_only() -> None:
    with pytest.raises(ValueError, match="openvino runs on device cpu only"):
        ModelConfig(engine="openvino", device="gpu:0")


def test_cpu_int8_adds_onednn_int8(version_dir: Path) -> None:
    plan = plan_predictor(ModelConfig(precision="int8"), version_dir, cuda_available=False)
    assert plan.methods()[-2:] == ["enable_mkldnn", "enable_mkldnn_int8"]
    assert "enable_tensorrt_engine" not in plan.methods()


def test_cpu_fp16_is_refused(version_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="fp16 needs device gpu:N"):
        plan_predictor(ModelConfig(precision="fp16"), version_dir, cuda_available=False, model="m")


def test_gpu_model_on_a_cpu_build_fails_with_a_clear_message(version_dir: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        plan_predictor(ModelConfig(device="gpu:0"), version_dir, cuda_available=False, model="resnet")
    assert "model 'resnet' is configured for device gpu:0" in info.value.message
    assert "no CUDA" in info.value.message
    assert "paddlepaddle-gpu" in info.value.message


def test_gpu_tensorrt_settings(version_dir: Path) -> None:
    config = ModelConfig.model_validate(
        {
            "device": "gpu:1",
            "precision": "fp16",
            "max_batch_size": 16,
            "tensorrt": {"workspace_size": 1 << 28, "min_subgraph_size": 5, "use_static": True, "cache_dir": "/c"},
        }
    )
    plan = plan_predictor(config, version_dir, cuda_available=True)
    assert "enable_mkldnn" not in plan.methods()
    assert plan.args("enable_use_gpu")[1] == 1
    assert plan.args("enable_tensorrt_engine") == (1 << 28, 16, 5, Precision("Half"), True, False)
    # min/max/opt default to batch 1 .. max_batch_size at the configured input shape
    assert plan.args("set_trt_dynamic_shape_info") == (
        {"x": [1, 3, 224, 224]},
        {"x": [16, 3, 224, 224]},
        {"x": [16, 3, 224, 224]},
    )
    assert plan.args("set_optim_cache_dir") == ("/c",)


def test_gpu_int8_calibration_only_when_asked(version_dir: Path) -> None:
    base = {"device": "gpu:0", "precision": "int8"}
    ptq = plan_predictor(ModelConfig.model_validate(base), version_dir, cuda_available=True)
    assert ptq.args("enable_tensorrt_engine")[3:] == (Precision("Int8"), False, False)
    calib = ModelConfig.model_validate({**base, "tensorrt": {"use_calib_mode": True}})
    assert plan_predictor(calib, version_dir, True).args("enable_tensorrt_engine")[5] is True
    # use_calib_mode means nothing for an fp32 engine
    fp32 = ModelConfig.model_validate({"device": "gpu:0", "tensorrt": {"use_calib_mode": True}})
    assert plan_predictor(fp32, version_dir, True).args("enable_tensorrt_engine")[5] is False


def test_explicit_dynamic_shapes_pass_through(version_dir: Path) -> None:
    shapes = {"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [8, 3, 224, 224]}
    config = ModelConfig.model_validate({"device": "gpu:0", "tensorrt": {"dynamic_shape": shapes}})
    mins, maxs, opts = plan_predictor(config, version_dir, True).args("set_trt_dynamic_shape_info")
    assert (mins["x"], maxs["x"], opts["x"]) == ([1, 3, 224, 224], [8, 3, 224, 224], [4, 3, 224, 224])


def test_gpu_without_tensorrt_is_plain_cuda_fp32_only(version_dir: Path) -> None:
    plain = ModelConfig.model_validate({"device": "gpu:0", "tensorrt": {"enabled": False}})
    assert "enable_tensorrt_engine" not in plan_predictor(plain, version_dir, True).methods()
    half = ModelConfig.model_validate({"device": "gpu:0", "precision": "fp16", "tensorrt": {"enabled": False}})
    with pytest.raises(ModelLoadError, match=r"needs tensorrt\.enabled"):
        plan_predictor(half, version_dir, True)


def test_missing_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"needs model.pdmodel and model.pdiparams"):
        plan_predictor(ModelConfig(), tmp_path, cuda_available=False)
