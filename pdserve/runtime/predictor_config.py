"""What a model config means for ``paddle.inference.Config``: decided here, applied in the worker.

``plan_predictor`` is pure (no Paddle import) so what it decides for GPU/TensorRT can be tested on
the CPU-only build; ``build_predictor`` applies a plan to a real ``Config``. ``plan_engine`` picks
the engine: Paddle's plan, or ONNX Runtime's (``onnx_engine.plan_session``) for ``engine: onnxruntime``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.errors import ModelLoadError
from pdserve.model_config import ModelConfig
from pdserve.runtime.onnx_engine import ONNX_FILE, OrtPredictor, SessionPlan, find_onnx_file, plan_session

GPU_MEMORY_POOL_MB = 256
SHAPE_FILE = "shape_range_info.pbtxt"  # pdserve collect-shapes writes it into the version folder
QDQ_OPS = (b"quantize_linear", b"dequantize_linear")
_TRT_PRECISION = {"fp32": "Float32", "fp16": "Half", "int8": "Int8"}


@dataclass(frozen=True)
class Precision:
    """A ``paddle.inference.PrecisionType`` member, named so plans stay Paddle-free."""

    name: str


@dataclass
class PredictorPlan:
    model_file: Path
    params_file: Path
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def add(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))

    def methods(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, method: str) -> tuple[Any, ...]:
        return next(args for name, args in self.calls if name == method)


PIR_ADVICE = (
    "pdserve quantize reads the legacy program: export the FP32 model again with FLAGS_enable_pir_api=0 set "
    "before Python starts (`FLAGS_enable_pir_api=0 python your_export.py`: paddle.jit.save then writes "
    "model.pdmodel), or use pdserve export, and quantize that; the PIR program itself serves as FP32"
)

# The program under the names Paddle's own tools publish it: paddle.jit.save's default prefix (and
# PaddleDetection's), then PaddleOCR / PaddleClas / PaddleSeg / PaddleX's inference.*. Within a prefix
# the legacy ProgramDesc (.pdmodel) comes before Paddle 3's PIR program (.json): it quantizes and
# takes enable_memory_optim.
PREFIXES = ("model", "inference")
SUFFIXES = {".pdmodel": "pdmodel", ".json": "pir"}  # program file suffix -> format reported in /models


def find_model_files(version_dir: Path) -> tuple[Path, Path] | None:
    """The program (``.pdmodel`` or PIR ``.json``) and ``.pdiparams`` of the first prefix that has both, or None."""
    for prefix in PREFIXES:
        params_file = version_dir / f"{prefix}.pdiparams"
        if not params_file.is_file():
            continue
        for suffix in SUFFIXES:
            model_file = version_dir / f"{prefix}{suffix}"
            if model_file.is_file():
                return model_file, params_file
    return None


def program_format(model_file: Path) -> str:
    """``pdmodel`` (Paddle 2's ProgramDesc, protobuf) or ``pir`` (Paddle 3's PIR program, JSON)."""
    return SUFFIXES[model_file.suffix]


def is_pir(model_file: Path) -> bool:
    return program_format(model_file) == "pir"


def served_files(version_dir: Path, engine: str = "onednn") -> list[Path]:
    """The files an engine loads from a version folder ([] when they are missing)."""
    if engine == "onnxruntime":
        return [p for p in (find_onnx_file(version_dir),) if p is not None]
    return list(find_model_files(version_dir) or ())


def missing_model_files(version_dir: Path, engine: str = "onednn") -> str | None:
    """Why ``version_dir`` holds no servable program, or None when it does (the file is not read)."""
    if engine == "onnxruntime":
        if find_onnx_file(version_dir) is not None:
            return None
        return f"{version_dir}: engine onnxruntime needs {ONNX_FILE} (pdserve convert {version_dir.parent} writes it)"
    if find_model_files(version_dir) is not None:
        return None
    return (
        f"{version_dir}: needs a program and its weights: model.pdmodel or model.json (Paddle 3 PIR) with "
        "model.pdiparams, or the same as inference.*"
    )


def model_files(version_dir: Path) -> tuple[Path, Path]:
    """The program and weights of a version folder, or ``ModelLoadError`` saying what to do.

    Paddle picks the program's parser by its suffix: a PIR program (JSON) named ``.pdmodel`` fails
    with a protobuf ``DecodeError`` that names neither, so it is refused here with the fix."""
    found = find_model_files(version_dir)
    if found is None:
        raise ModelLoadError(missing_model_files(version_dir) or f"{version_dir}: no program")
    model_file, params_file = found
    if not is_pir(model_file):
        with model_file.open("rb") as f:
            head = f.read(64).lstrip()
        if head.startswith(b"{"):  # a ProgramDesc is protobuf: its first byte is a field tag, never '{'
            raise ModelLoadError(
                f"{model_file}: a Paddle 3 PIR program (JSON) under the legacy name: rename it to "
                f"{model_file.with_suffix('.json').name}"
            )
    return model_file, params_file


def plan_predictor(config: ModelConfig, version_dir: Path, cuda_available: bool, model: str = "") -> PredictorPlan:
    """Turn a model config into the ``Config`` calls that serve it, or raise ``ModelLoadError``."""
    plan = PredictorPlan(*model_files(version_dir))
    model_file = plan.model_file
    plan.add("disable_glog_info")
    plan.add("switch_ir_optim", True)
    pir = is_pir(model_file)
    # enable_memory_optim() fails to create a predictor for a PIR program on Paddle 3.3.1 ("Not find
    # predictor_id 1 and pass_name memory_optimize_pass", Paddle issue 75496); for the legacy program
    # it is safe and cuts activation memory.
    if not pir:
        plan.add("enable_memory_optim", True)
    if pir and config.precision == "int8":
        raise ModelLoadError(f"model {model!r}: precision int8 with a PIR program ({model_file.name}). {PIR_ADVICE}")

    gpu_id = config.gpu_id
    if gpu_id is None:
        if config.precision == "fp16":
            raise ModelLoadError(f"model {model!r}: precision fp16 needs device gpu:N; on CPU use fp32 or int8")
        plan.add("disable_gpu")
        plan.add("set_cpu_math_library_num_threads", config.cpu_threads)
        if config.engine == "openvino":
            if pir:  # OpenVINO's Paddle frontend reads ProgramDesc only (openvino issue 29325)
                raise ModelLoadError(
                    f"model {model!r}: engine openvino cannot read a PIR program ({model_file.name}): use engine "
                    "onednn, or export with FLAGS_enable_pir_api=0 for a model.pdmodel"
                )
            plan.add("enable_openvino_engine", Precision("Int8" if config.precision == "int8" else "Float32"))
            return plan
        if config.onednn_cache_shapes:
            plan.add("set_mkldnn_cache_capacity", config.onednn_cache_shapes)
        plan.add("enable_mkldnn")
        if config.precision == "int8":
            # Without the oneDNN INT8 passes a quantized model runs 4-7x slower than FP32.
            plan.add("enable_mkldnn_int8")
        return plan

    if not cuda_available:
        raise ModelLoadError(
            f"model {model!r} is configured for device {config.device}, but this Paddle build has no CUDA: "
            "install paddlepaddle-gpu (see README, GPU) or set device: cpu in its config.yaml"
        )
    plan.add("enable_use_gpu", GPU_MEMORY_POOL_MB, gpu_id)
    trt = config.tensorrt
    quantized = is_quantized(model_file)
    if not trt.enabled:
        if config.precision != "fp32" or quantized:
            raise ModelLoadError(
                f"model {model!r}: precision {config.precision}"
                f"{' with quantize/dequantize ops' if quantized else ''} on GPU needs tensorrt.enabled: true"
            )
        return plan
    if quantized and config.precision != "int8":
        raise ModelLoadError(
            f"model {model!r} has quantize/dequantize ops (an INT8 model): set precision: int8 in its config.yaml"
        )
    mode = int8_mode(config, quantized)
    plan.add(
        "enable_tensorrt_engine",
        trt.workspace_size,
        config.max_batch_size,
        trt.min_subgraph_size,
        Precision(_TRT_PRECISION[config.precision]),
        trt.use_static,
        mode == "calibration",  # use_calib_mode: TensorRT's own calibration table (pdserve calibrate)
    )
    if mode == "explicit":  # the model's own scales, as pdserve quantize wrote them
        plan.add("enable_tensorrt_explicit_quantization")
    profile = shape_profile(config, version_dir, model)
    if trt.shape_mode == "dynamic":
        name = config.input.name
        plan.add("set_trt_dynamic_shape_info", {name: profile["min"]}, {name: profile["max"]}, {name: profile["opt"]})
    elif trt.shape_mode == "tuned":
        plan.add("enable_tuned_tensorrt_dynamic_shape", str(version_dir / SHAPE_FILE), True)
    if trt.cache_dir:
        cache = engine_cache_dir(Path(trt.cache_dir), model, version_dir, config, profile, quantized)
        plan.add("set_optim_cache_dir", str(cache))
    return plan


def plan_engine(config: ModelConfig, version_dir: Path, model: str = "") -> PredictorPlan | SessionPlan:
    """The plan of the model's engine; Paddle is imported (to ask for CUDA) only when Paddle runs it."""
    if config.engine == "onnxruntime":
        return plan_session(config, version_dir, model)
    import paddle

    return plan_predictor(config, version_dir, paddle.device.is_compiled_with_cuda(), model)


def plan_shape_collection(
    config: ModelConfig, version_dir: Path, cuda_available: bool, out_file: Path, model: str = ""
) -> PredictorPlan:
    """The predictor ``pdserve collect-shapes`` runs: it records the shape range of every tensor into
    ``out_file`` (Paddle writes it when the predictor is destroyed).

    As Paddle's tuned-dynamic-shape guide does, it runs on the model's own GPU without TensorRT; on a
    build without CUDA, on the CPU. In this mode Paddle turns IR optimisation off itself (it logs "In
    CollectShapeInfo mode, we will disable optimizations"), so every tensor is recorded under the name
    the saved program gives it, whichever device collected it."""
    plan = PredictorPlan(*model_files(version_dir))
    plan.add("disable_glog_info")
    if config.gpu_id is not None and cuda_available:
        plan.add("enable_use_gpu", GPU_MEMORY_POOL_MB, config.gpu_id)
    else:
        plan.add("disable_gpu")
        plan.add("set_cpu_math_library_num_threads", config.cpu_threads)
    plan.add("collect_shape_range_info", str(out_file))
    return plan


def read_shape_ranges(path: Path) -> dict[str, dict[str, list[int]]]:
    """The entries of a collected shape file: tensor name -> min/max/opt shapes.

    The file is a text protobuf: one ``shape_range_info { ... }`` block per tensor with ``name`` and
    repeated ``min_shape``/``max_shape``/``opt_shape`` fields (what Paddle 3.3.1 writes)."""
    ranges: dict[str, dict[str, list[int]]] = {}
    current: dict[str, list[int]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("shape_range_info"):
            current = {"min": [], "max": [], "opt": []}
        elif line.startswith("name:") and current is not None:
            ranges[line.split(":", 1)[1].strip().strip('"')] = current
        elif current is not None and ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            if key in ("min_shape", "max_shape", "opt_shape"):
                current[key.removesuffix("_shape")].append(int(value))
    return ranges


def is_quantized(model_file: Path) -> bool:
    """Whether a legacy program holds quantize/dequantize ops (what pdserve quantize writes).

    Op types are stored as plain strings in the program's protobuf, so a byte search finds them."""
    data = model_file.read_bytes()
    return any(op in data for op in QDQ_OPS)


def int8_mode(config: ModelConfig, quantized: bool) -> str | None:
    """How an INT8 TensorRT engine gets its scales: from the model's quantize/dequantize ops
    ("explicit"), or from TensorRT calibration of a float model ("calibration"); None if not INT8."""
    if config.precision != "int8":
        return None
    return "explicit" if quantized else "calibration"


def shape_profile(config: ModelConfig, version_dir: Path, model: str = "") -> dict[str, Any]:
    """What the engine's input shapes are: min/opt/max (dynamic), the collected ranges (tuned), or one shape."""
    trt, shape = config.tensorrt, list(config.input.shape)
    if trt.shape_mode == "tuned":
        ranges = version_dir / SHAPE_FILE
        if not ranges.is_file():
            raise ModelLoadError(
                f"model {model!r}: tensorrt.shape_mode tuned needs {ranges}; make it with "
                f"pdserve collect-shapes {version_dir.parent} --data-dir IMAGES"
            )
        found = read_shape_ranges(ranges).get(config.input.name)
        if found is None or not found["min"] or not found["max"]:
            raise ModelLoadError(f"model {model!r}: {ranges} has no shape range for input {config.input.name!r}")
        if found["min"][0] > 1 or found["max"][0] < config.max_batch_size:
            raise ModelLoadError(
                f"model {model!r}: {ranges} covers batches {found['min'][0]}..{found['max'][0]}, not "
                f"1..{config.max_batch_size} (max_batch_size); collect the shapes again"
            )
        return {"mode": "tuned", "ranges_sha256": hashlib.sha256(ranges.read_bytes()).hexdigest()}
    if trt.shape_mode == "static":
        return {"mode": "static", "shape": [config.max_batch_size, *shape]}
    given = trt.dynamic_shape
    return {
        "mode": "dynamic",
        "min": list(given.min) if given else [1, *shape],
        "opt": list(given.opt) if given else [config.max_batch_size, *shape],
        "max": list(given.max) if given else [config.max_batch_size, *shape],
    }


def weights_digest(params_file: Path) -> str:
    """The first 16 hex digits of the weights file's SHA-256."""
    digest = hashlib.sha256()
    with params_file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def engine_cache_dir(
    root: Path, model: str, version_dir: Path, config: ModelConfig, profile: dict[str, Any], quantized: bool
) -> Path:
    """One folder per model, version, precision (and INT8 mode), shape profile and weights.

    Paddle names serialized engines by graph, batch and precision, not by weights: two versions of
    one architecture sharing a folder could load each other's engines. Here they cannot."""
    mode = int8_mode(config, quantized)
    precision = config.precision + (f"-{mode}" if mode else "")
    shapes = hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()[:8]
    weights = weights_digest(model_files(version_dir)[1])
    return root / (model or "model") / version_dir.name / f"{precision}-{profile['mode']}-{shapes}-w{weights}"


def tensorrt_problem(compiled: tuple[int, ...], runtime: tuple[int, ...] | None) -> str | None:
    """Why TensorRT cannot run with this Paddle, or None. ``compiled`` is the TensorRT version Paddle was
    built against (0.0.0: none); ``runtime`` the libnvinfer it loads (None: it failed to load one).

    Paddle's GPU wheels are built with TensorRT but, unless ``paddle.version.with_pip_tensorrt`` is ON,
    do not install it; without libnvinfer, ``enable_tensorrt_engine`` fails only when the engine builds."""
    want = ".".join(map(str, compiled))
    if not any(compiled):
        return (
            "this Paddle build has no TensorRT (get_trt_compile_version() is 0.0.0): use Paddle's GPU image "
            "or paddlepaddle-gpu from Paddle's package index (README, GPU), or set tensorrt.enabled: false"
        )
    if runtime is None or not any(runtime):
        return (
            f"Paddle was built against TensorRT {want} but loads no TensorRT runtime (libnvinfer): install "
            f"TensorRT {compiled[0]}.x where the dynamic loader finds it (README, GPU), or set tensorrt.enabled: false"
        )
    if runtime[0] != compiled[0]:
        return f"Paddle was built against TensorRT {want} but loads TensorRT {'.'.join(map(str, runtime))}"
    return None


def check_tensorrt() -> None:
    """Raise ``ModelLoadError`` when this Paddle cannot run TensorRT (before minutes of engine building)."""
    from paddle import inference

    try:
        runtime: tuple[int, ...] | None = tuple(inference.get_trt_runtime_version())
    except Exception:  # Paddle's dynamic loader raises when libnvinfer is absent
        runtime = None
    problem = tensorrt_problem(tuple(inference.get_trt_compile_version()), runtime)
    if problem:
        raise ModelLoadError(problem)


def build_predictor(plan: PredictorPlan | SessionPlan) -> Any:
    """Apply a plan to a ``paddle.inference.Config`` and create the predictor (worker side only);
    an ONNX Runtime plan gives an ``OrtPredictor``, which offers the same methods."""
    if isinstance(plan, SessionPlan):
        return OrtPredictor(plan)
    from paddle import inference

    if "enable_tensorrt_engine" in plan.methods():
        check_tensorrt()
    cfg = inference.Config(str(plan.model_file), str(plan.params_file))
    for method, args in plan.calls:
        if method == "set_optim_cache_dir":  # created on first start, reused after
            Path(args[0]).mkdir(parents=True, exist_ok=True)
        resolved = [getattr(inference.PrecisionType, a.name) if isinstance(a, Precision) else a for a in args]
        getattr(cfg, method)(*resolved)
    return inference.create_predictor(cfg)


class LoadedPredictor:
    """A predictor (Paddle or ONNX Runtime) for one model version, with its plan; used by workers and offline tools."""

    def __init__(
        self, config: ModelConfig, version_dir: Path, model: str = "", plan: PredictorPlan | SessionPlan | None = None
    ) -> None:
        self.plan = plan or plan_engine(config, version_dir, model)
        self.predictor = build_predictor(self.plan)
        self.input_name = config.input.name
        self.input = self.predictor.get_input_handle(config.input.name)
        outputs = self.predictor.get_output_names()
        name = config.output.name or outputs[0]
        if name not in outputs:
            raise ModelLoadError(f"model {model!r}: output {name!r} not in model outputs {outputs}")
        self.output_name = name
        self.output = self.predictor.get_output_handle(name)

    def clone(self) -> LoadedPredictor:
        """A second predictor over the same weights (Paddle's ``Predictor.clone``), with its own
        activations and shapes; the same session again for ONNX Runtime (it keeps no per-shape state)."""
        twin = copy.copy(self)
        if isinstance(self.plan, SessionPlan):
            return twin
        twin.predictor = self.predictor.clone()
        twin.input = twin.predictor.get_input_handle(self.input_name)
        twin.output = twin.predictor.get_output_handle(self.output_name)
        return twin

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.input.reshape(list(batch.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(batch, np.float32))
        self.predictor.run()
        result: np.ndarray = self.output.copy_to_cpu()
        return result
