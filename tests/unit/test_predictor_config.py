"""What a model config decides for Paddle Inference, GPU/TensorRT included, checked on the CPU build."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdserve.errors import ModelLoadError
from pdserve.model_config import ModelConfig
from pdserve.runtime.predictor_config import (
    SHAPE_FILE,
    Precision,
    engine_cache_dir,
    int8_mode,
    missing_model_files,
    model_files,
    plan_predictor,
    plan_shape_collection,
    program_format,
    read_shape_ranges,
    shape_profile,
    tensorrt_problem,
)


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


def test_onednn_keeps_primitives_for_the_configured_number_of_shapes(version_dir: Path) -> None:
    plan = plan_predictor(ModelConfig(onednn_cache_shapes=48), version_dir, cuda_available=False)
    assert plan.args("set_mkldnn_cache_capacity") == (48,)
    assert plan.methods().index("set_mkldnn_cache_capacity") < plan.methods().index("enable_mkldnn")


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
    (cache,) = plan.args("set_optim_cache_dir")
    assert Path(cache).parent == Path("/c/model") / version_dir.name  # model, version
    assert Path(cache).name.startswith("fp16-dynamic-")


def test_gpu_int8_mode_is_decided_by_the_model(version_dir: Path) -> None:
    int8 = ModelConfig.model_validate({"device": "gpu:0", "precision": "int8"})
    # a float model run as INT8: TensorRT calibration (use_calib_mode), no explicit quantization
    calibrated = plan_predictor(int8, version_dir, cuda_available=True)
    assert calibrated.args("enable_tensorrt_engine")[3:] == (Precision("Int8"), False, True)
    assert "enable_tensorrt_explicit_quantization" not in calibrated.methods()
    # a model with quantize/dequantize ops (what pdserve quantize writes): its own scales
    (version_dir / "model.pdmodel").write_bytes(b"...\x12\x0fquantize_linear...dequantize_linear...")
    explicit = plan_predictor(int8, version_dir, cuda_available=True)
    assert explicit.args("enable_tensorrt_engine")[3:] == (Precision("Int8"), False, False)
    assert "enable_tensorrt_explicit_quantization" in explicit.methods()
    with pytest.raises(ModelLoadError, match="has quantize/dequantize ops"):
        plan_predictor(ModelConfig(device="gpu:0"), version_dir, cuda_available=True, model="m")
    # use_calib_mode is ignored: the model decides
    fp32 = ModelConfig.model_validate({"device": "gpu:0", "tensorrt": {"use_calib_mode": True}})
    (version_dir / "model.pdmodel").write_bytes(b"")
    assert plan_predictor(fp32, version_dir, True).args("enable_tensorrt_engine")[5] is False
    assert int8_mode(fp32, quantized=False) is None


def test_tuned_shapes_need_the_collected_file(version_dir: Path) -> None:
    tuned = ModelConfig.model_validate({"device": "gpu:0", "tensorrt": {"shape_mode": "tuned"}})
    with pytest.raises(ModelLoadError, match="pdserve collect-shapes"):
        plan_predictor(tuned, version_dir, cuda_available=True, model="m")
    (version_dir / SHAPE_FILE).write_text(shape_file("x", 1, 8))
    plan = plan_predictor(tuned, version_dir, cuda_available=True)
    assert plan.args("enable_tuned_tensorrt_dynamic_shape") == (str(version_dir / SHAPE_FILE), True)
    assert "set_trt_dynamic_shape_info" not in plan.methods()


def shape_file(name: str, low: int, high: int) -> str:
    """A shape file as Paddle 3.3.1 writes it (tests/e2e/test_engines.py makes a real one)."""
    fields = "".join(f"  {key}_shape: {batch}\n  {key}_shape: 3\n" for key, batch in [("min", low), ("max", high)])
    other = 'shape_range_info {\n  name: "conv.w_0"\n  min_shape: 8\n  max_shape: 8\n  opt_shape: 8\n}\n'
    return other + f'shape_range_info {{\n  name: "{name}"\n{fields}  opt_shape: {high}\n  opt_shape: 3\n}}\n'


def test_shape_files_are_read_per_tensor(tmp_path: Path) -> None:
    path = tmp_path / SHAPE_FILE
    path.write_text(shape_file("x", 1, 8))
    assert read_shape_ranges(path) == {
        "conv.w_0": {"min": [8], "max": [8], "opt": [8]},
        "x": {"min": [1, 3], "max": [8, 3], "opt": [8, 3]},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (shape_file("image", 1, 8), "no shape range for input 'x'"),
        (shape_file("x", 1, 4), "covers batches 1..4, not 1..8"),
        (shape_file("x", 2, 8), "covers batches 2..8"),
    ],
)
def test_tuned_shapes_must_cover_every_batch_the_server_runs(version_dir: Path, text: str, message: str) -> None:
    (version_dir / SHAPE_FILE).write_text(text)
    tuned = ModelConfig.model_validate({"device": "gpu:0", "max_batch_size": 8, "tensorrt": {"shape_mode": "tuned"}})
    with pytest.raises(ModelLoadError, match=message):
        plan_predictor(tuned, version_dir, cuda_available=True, model="m")


def test_shape_collection_runs_on_the_models_gpu_without_tensorrt_or_on_the_cpu(version_dir: Path) -> None:
    out = version_dir / "ranges.partial"
    gpu = ModelConfig.model_validate({"device": "gpu:1", "precision": "int8", "tensorrt": {"enabled": True}})
    plan = plan_shape_collection(gpu, version_dir, True, out)
    assert plan.args("enable_use_gpu")[1] == 1
    assert plan.args("collect_shape_range_info") == (str(out),)
    assert not [m for m in plan.methods() if "tensorrt" in m or "mkldnn" in m]
    cpu = plan_shape_collection(gpu, version_dir, False, out)  # a build without CUDA: collected on the CPU
    assert "disable_gpu" in cpu.methods()
    assert "enable_use_gpu" not in cpu.methods()


def test_static_shapes_pad_every_batch_to_the_one_engine_shape(version_dir: Path) -> None:
    static = ModelConfig.model_validate({"device": "gpu:0", "max_batch_size": 8, "tensorrt": {"shape_mode": "static"}})
    assert static.padded_batch_sizes == (8,)
    assert "set_trt_dynamic_shape_info" not in plan_predictor(static, version_dir, True).methods()
    assert ModelConfig(max_batch_size=8, tensorrt={"shape_mode": "static"}).padded_batch_sizes == (1, 2, 4, 8)  # CPU


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [2, 3, 224, 224]}, "min <= opt <= max"),
        ({"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [4, 3, 224, 224]}, "below max_batch_size 8"),
        ({"min": [1, 3, 224], "opt": [4, 3, 224], "max": [8, 3, 224]}, "4 dimensions"),
    ],
)
def test_dynamic_shapes_are_checked_at_config_load(shapes: dict[str, list[int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.model_validate({"device": "gpu:0", "max_batch_size": 8, "tensorrt": {"dynamic_shape": shapes}})


def test_engine_caches_are_keyed_by_version_precision_profile_and_weights(tmp_path: Path) -> None:
    def version(name: str, weights: bytes) -> Path:
        folder = tmp_path / "resnet" / name
        folder.mkdir(parents=True)
        (folder / "model.pdmodel").write_bytes(b"program")
        (folder / "model.pdiparams").write_bytes(weights)
        return folder

    one, two = version("1", b"weights A"), version("2", b"weights B")
    fp16 = ModelConfig(device="gpu:0", precision="fp16")

    def cache(config: ModelConfig, folder: Path) -> Path:
        return engine_cache_dir(Path("/cache"), "resnet", folder, config, shape_profile(config, folder), False)

    assert cache(fp16, one) == cache(fp16, one)  # reused on the next start
    assert cache(fp16, one).parts[:4] == ("/", "cache", "resnet", "1")
    assert cache(fp16, one).name != cache(fp16, two).name  # other weights, other engines
    assert cache(fp16, one) != cache(ModelConfig(device="gpu:0"), one)  # precision
    assert cache(fp16, one) != cache(fp16.model_copy(update={"max_batch_size": 16}), one)  # profile
    (two / "model.pdiparams").write_bytes(b"weights A")  # same weights, other version: still apart
    assert cache(fp16, one) != cache(fp16, two)


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
    with pytest.raises(ModelLoadError, match=r"needs a program and its weights: model.pdmodel or model.json"):
        plan_predictor(ModelConfig(), tmp_path, cuda_available=False)


def test_programs_are_found_under_the_names_paddles_tools_publish(tmp_path: Path) -> None:
    (tmp_path / "inference.pdmodel").write_bytes(b"\x0a\x00")  # PaddleOCR / PaddleClas exports
    (tmp_path / "inference.pdiparams").write_bytes(b"")
    assert model_files(tmp_path) == (tmp_path / "inference.pdmodel", tmp_path / "inference.pdiparams")
    (tmp_path / "model.pdmodel").write_bytes(b"\x0a\x00")  # paddle.jit.save's default comes first
    (tmp_path / "model.pdiparams").write_bytes(b"")
    assert model_files(tmp_path)[0] == tmp_path / "model.pdmodel"


@pytest.mark.parametrize("prefix", ["model", "inference"])
def test_a_pir_program_is_planned_without_memory_optim(tmp_path: Path, prefix: str) -> None:
    """Paddle 3's default export: enable_memory_optim fails to create its predictor (Paddle #75496)."""
    (tmp_path / f"{prefix}.json").write_text('{"base_code": {"magic": "pir", "version": 4}}')
    (tmp_path / f"{prefix}.pdiparams").write_bytes(b"")
    plan = plan_predictor(ModelConfig(), tmp_path, cuda_available=False)
    assert plan.model_file == tmp_path / f"{prefix}.json"
    assert program_format(plan.model_file) == "pir"
    assert "enable_memory_optim" not in plan.methods()
    assert "enable_mkldnn" in plan.methods()


def test_the_legacy_program_comes_before_pir_within_a_prefix(tmp_path: Path) -> None:
    for name in ("inference.json", "inference.pdmodel"):
        (tmp_path / name).write_bytes(b"\x0a\x00")
    (tmp_path / "inference.pdiparams").write_bytes(b"")
    plan = plan_predictor(ModelConfig(), tmp_path, cuda_available=False)
    assert plan.model_file.name == "inference.pdmodel"
    assert "enable_memory_optim" in plan.methods()


def test_pir_refuses_int8_and_openvino_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "model.pdiparams").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"PIR program.*FLAGS_enable_pir_api=0"):
        plan_predictor(ModelConfig(precision="int8"), tmp_path, cuda_available=False)
    with pytest.raises(ModelLoadError, match=r"openvino cannot read a PIR program"):
        plan_predictor(ModelConfig(engine="openvino"), tmp_path, cuda_available=False)


def test_a_pir_program_under_the_legacy_name_is_refused_with_the_fix(tmp_path: Path) -> None:
    """Paddle's own error would be a protobuf DecodeError naming neither the file nor the fix."""
    (tmp_path / "model.pdmodel").write_text('{"base_code": {"magic": "pir", "version": 1}}')
    (tmp_path / "model.pdiparams").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"PIR program.*rename it to model.json"):
        plan_predictor(ModelConfig(), tmp_path, cuda_available=False)


def test_missing_program_names_every_layout(tmp_path: Path) -> None:
    message = missing_model_files(tmp_path)
    assert message is not None
    assert "model.json" in message
    assert "inference.*" in message


@pytest.mark.parametrize(
    ("compiled", "runtime", "message"),
    [
        ((0, 0, 0), (0, 0, 0), "this Paddle build has no TensorRT"),  # the CPU wheel (checked below)
        ((10, 5, 0), None, "built against TensorRT 10.5.0 but loads no TensorRT runtime"),  # wheel without libnvinfer
        ((10, 5, 0), (8, 6, 1), "loads TensorRT 8.6.1"),
        ((10, 5, 0), (10, 7, 0), None),
    ],
)
def test_tensorrt_is_checked_before_engines_are_built(
    compiled: tuple[int, ...], runtime: tuple[int, ...] | None, message: str | None
) -> None:
    problem = tensorrt_problem(compiled, runtime)
    assert problem is None if message is None else message in (problem or "")


def test_the_cpu_wheel_reports_no_tensorrt() -> None:
    from paddle import inference

    assert tuple(inference.get_trt_compile_version()) == (0, 0, 0)
