"""engine: onnxruntime: what the plan decides (CPU, CUDA, TensorRT providers; pure, no GPU), and the
predictor adapter on the real ONNX Runtime CPU provider with a small ONNX model built here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pdserve.errors import ModelLoadError
from pdserve.model_config import ModelConfig
from pdserve.runtime.onnx_engine import CPU_EP, CUDA_EP, ONNX_FILE, TRT_EP, plan_session, session_signature
from pdserve.runtime.predictor_config import LoadedPredictor, missing_model_files, plan_engine, served_files

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

WEIGHTS = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def write_model(version_dir: Path) -> Path:
    """x [N, 3] -> softmax(x @ W) [N, 4], batch dimension free."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(WEIGHTS, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / ONNX_FILE
    onnx.save(model, path)
    return path


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny" / "1"
    write_model(folder)
    return folder


def config(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"engine": "onnxruntime", "kind": "tensor", **fields})


def test_cpu_plan_uses_the_model_threads_and_the_cpu_provider(version_dir: Path) -> None:
    plan = plan_session(config(cpu_threads=3), version_dir)
    assert plan.model_file == version_dir / ONNX_FILE
    assert plan.provider_names == [CPU_EP]
    assert plan.options["intra_op_num_threads"] == 3
    assert plan.options["inter_op_num_threads"] == 1
    assert plan.entries["session.intra_op.allow_spinning"] == "0"
    assert not plan.io_binding


def test_gpu_plan_puts_the_cuda_provider_on_the_configured_device(version_dir: Path) -> None:
    plan = plan_session(config(device="gpu:1", tensorrt={"enabled": False}), version_dir)
    assert plan.provider_names == [CUDA_EP, CPU_EP]
    cuda = dict(plan.providers)[CUDA_EP]
    assert cuda["device_id"] == "1"
    assert cuda["cudnn_conv_algo_search"] == "HEURISTIC"
    assert plan.device_id == 1
    assert not plan.io_binding
    bound = plan_session(
        config(device="gpu:0", tensorrt={"enabled": False}, onnxruntime={"io_binding": True, "use_tf32": False}),
        version_dir,
    )
    assert bound.io_binding
    assert dict(bound.providers)[CUDA_EP]["use_tf32"] == "0"


def test_tensorrt_provider_is_planned_first_with_the_shape_profile(version_dir: Path, tmp_path: Path) -> None:
    cfg = config(
        kind="image",
        device="gpu:0",
        precision="fp16",
        max_batch_size=16,
        tensorrt={"cache_dir": str(tmp_path / "cache"), "workspace_size": 1 << 28},
    )
    plan = plan_session(cfg, version_dir, "m")
    assert plan.provider_names == [TRT_EP, CUDA_EP, CPU_EP]
    trt = dict(plan.providers)[TRT_EP]
    assert trt["trt_profile_min_shapes"] == "x:1x3x224x224"
    assert trt["trt_profile_opt_shapes"] == trt["trt_profile_max_shapes"] == "x:16x3x224x224"
    assert trt["trt_fp16_enable"] == "1"
    assert trt["trt_int8_enable"] == "0"
    assert trt["trt_max_workspace_size"] == str(1 << 28)
    assert trt["trt_engine_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "cache" / "m" / "1" / "fp16")


def test_tensorrt_static_and_given_profiles_and_int8(version_dir: Path) -> None:
    static = plan_session(config(kind="image", device="gpu:0", tensorrt={"shape_mode": "static"}), version_dir)
    trt = dict(static.providers)[TRT_EP]
    assert trt["trt_profile_min_shapes"] == trt["trt_profile_max_shapes"] == "x:8x3x224x224"
    given = config(
        kind="image",
        device="gpu:0",
        precision="int8",
        tensorrt={"dynamic_shape": {"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [8, 3, 224, 224]}},
    )
    trt = dict(plan_session(given, version_dir).providers)[TRT_EP]
    assert trt["trt_profile_opt_shapes"] == "x:4x3x224x224"
    assert trt["trt_int8_enable"] == "1"
    assert "trt_engine_cache_enable" not in trt


def test_refusals_name_the_fix(version_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="fp16 needs device gpu"):
        plan_session(config(precision="fp16"), version_dir)
    with pytest.raises(ModelLoadError, match=r"tensorrt\.enabled: true"):
        plan_session(config(device="gpu:0", precision="fp16", tensorrt={"enabled": False}), version_dir)
    with pytest.raises(ModelLoadError, match="shape_mode tuned"):
        plan_session(config(device="gpu:0", tensorrt={"shape_mode": "tuned"}), version_dir)
    with pytest.raises(ModelLoadError, match="pdserve convert"):
        plan_session(config(), tmp_path / "empty")


def test_the_repository_looks_for_model_onnx_with_this_engine(version_dir: Path) -> None:
    assert missing_model_files(version_dir, "onnxruntime") is None
    assert served_files(version_dir, "onnxruntime") == [version_dir / ONNX_FILE]
    assert "model.pdmodel" in (missing_model_files(version_dir) or "")
    (version_dir / ONNX_FILE).unlink()
    assert "pdserve convert" in (missing_model_files(version_dir, "onnxruntime") or "")


def test_a_missing_provider_is_refused_not_run_on_the_cpu(version_dir: Path) -> None:
    if CUDA_EP in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    with pytest.raises(ModelLoadError, match="no CUDAExecutionProvider"):
        LoadedPredictor(config(device="gpu:0", tensorrt={"enabled": False}), version_dir)


def test_the_adapter_runs_like_a_paddle_predictor(version_dir: Path) -> None:
    runner = LoadedPredictor(config(input={"name": "x", "shape": [3, 1, 1]}), version_dir)
    x = np.array([[1, 0, 0], [0, 2, 1], [0, 0, 0]], np.float32)
    logits = x @ WEIGHTS
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(runner.run(x), expected, rtol=1e-6)
    np.testing.assert_allclose(runner.run(x[:1]), expected[:1], rtol=1e-6)  # another batch size, same session
    predictor = runner.predictor
    assert predictor.get_input_names() == ["x"]
    assert predictor.get_output_names() == ["probs"]
    inputs, outputs = session_signature(predictor.session, version_dir / ONNX_FILE)
    assert inputs == [("x", "float32", (-1, 3))]
    assert outputs == [("probs", "float32", (-1, 4))]
    with pytest.raises(ModelLoadError, match="not in model outputs"):
        LoadedPredictor(config(output={"name": "nope"}), version_dir)


def test_a_worker_of_this_engine_never_imports_paddle(version_dir: Path) -> None:
    # As on a GPU host without Paddle: importing it fails, and the predictor still loads and runs.
    code = (
        "import sys; sys.modules['paddle'] = None\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from pdserve.model_config import ModelConfig\n"
        "from pdserve.runtime import worker\n"
        "from pdserve.runtime.predictor_config import LoadedPredictor\n"
        "cfg = ModelConfig(engine='onnxruntime', kind='tensor')\n"
        f"out = LoadedPredictor(cfg, Path({str(version_dir)!r})).run(np.ones((2, 3), np.float32))\n"
        "assert out.shape == (2, 4), out.shape\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_plan_engine_dispatches_on_the_engine(version_dir: Path) -> None:
    plan = plan_engine(config(), version_dir)
    assert getattr(plan, "provider_names", None) == [CPU_EP]


def test_a_session_per_input_shape_when_planned(version_dir: Path) -> None:
    plan = plan_session(config(), version_dir)
    plan.session_per_shape = True
    runner = LoadedPredictor(config(), version_dir, plan=plan)
    x = np.ones((4, 3), np.float32)
    first = runner.run(x[:2])
    runner.run(x)
    np.testing.assert_allclose(runner.run(x[:2]), first)
    assert len(runner.predictor._by_shape) == 2
    assert plan_session(config(device="gpu:0", tensorrt={"enabled": False}), version_dir).session_per_shape
