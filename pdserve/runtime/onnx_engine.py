"""ONNX Runtime as a predictor: ``engine: onnxruntime`` serves ``model.onnx`` (``pdserve convert`` writes it).

The session is wrapped in the part of Paddle's predictor API that pdserve's workers call
(``get_input_handle(name).reshape/copy_from_cpu``, ``run``, ``get_output_handle(name).copy_to_cpu``,
the name lists), so the image and tensor workers run it unchanged, and a worker of this engine never
imports Paddle (the GPU hosts it runs on have none).

``plan_session`` is pure, like ``plan_predictor``: which execution providers, with which options,
in which order, is decided and tested without ONNX Runtime or a GPU; ``create_session`` applies it
and checks that the providers asked for are the ones that run (ONNX Runtime otherwise falls back to
the CPU with only a log line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.errors import ModelLoadError
from pdserve.model_config import ModelConfig

ONNX_FILE = "model.onnx"
CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"

# onnx TensorProto element types as ONNX Runtime names them -> numpy
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


@dataclass
class SessionPlan:
    """What ``create_session`` does: session options, then providers in order of preference."""

    model_file: Path
    options: dict[str, Any] = field(default_factory=dict)  # SessionOptions attribute -> value
    entries: dict[str, str] = field(default_factory=dict)  # add_session_config_entry
    providers: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    io_binding: bool = False  # inputs copied to device buffers kept per shape, outputs bound on the device
    session_per_shape: bool = False  # a session for each input shape (CUDA re-plans on a shape change)
    device_id: int | None = None

    @property
    def provider_names(self) -> list[str]:
        return [name for name, _ in self.providers]

    def methods(self) -> list[str]:
        """What reports list as the configuration (``PredictorPlan.methods`` for Paddle): the providers."""
        return self.provider_names


def find_onnx_file(version_dir: Path) -> Path | None:
    path = version_dir / ONNX_FILE
    return path if path.is_file() else None


def onnx_file(version_dir: Path) -> Path:
    found = find_onnx_file(version_dir)
    if found is None:
        raise ModelLoadError(
            f"{version_dir}: engine onnxruntime needs {ONNX_FILE}; write it with "
            f"pdserve convert {version_dir.parent} (paddle2onnx, checked against Paddle)"
        )
    return found


def _shape(name: str, dims: list[int], batch: int) -> str:
    return f"{name}:" + "x".join(str(d) for d in [batch, *dims])


def plan_session(
    config: ModelConfig, version_dir: Path, model: str = "", model_file: Path | None = None
) -> SessionPlan:
    """Turn a model config into ONNX Runtime session options and providers, or raise ``ModelLoadError``.

    ``model_file``: another file than the folder's ``model.onnx`` (pdserve convert checks one before keeping it)."""
    plan = SessionPlan(model_file or onnx_file(version_dir))
    plan.options["graph_optimization_level"] = "ORT_ENABLE_ALL"
    plan.options["execution_mode"] = "ORT_SEQUENTIAL"
    plan.options["inter_op_num_threads"] = 1
    plan.options["intra_op_num_threads"] = config.cpu_threads
    plan.options["log_severity_level"] = 3  # errors only; warnings about unused initializers are noise
    # Idle pool threads spin by default, taking a core each from the HTTP process and the other
    # instances while they wait for the next batch; workers here are fed in bursts.
    plan.entries["session.intra_op.allow_spinning"] = "0"
    gpu = config.gpu_id
    if gpu is None:
        if config.precision == "fp16":
            raise ModelLoadError(f"model {model!r}: precision fp16 needs device gpu:N; on CPU use fp32 or int8")
        plan.providers.append((CPU_EP, {}))
        return plan
    plan.device_id = gpu
    ort = config.onnxruntime
    plan.io_binding = ort.io_binding
    plan.session_per_shape = ort.session_per_shape
    trt = config.tensorrt
    if trt.enabled:
        plan.providers.append((TRT_EP, tensorrt_options(config, version_dir, model)))
    elif config.precision != "fp32":
        raise ModelLoadError(
            f"model {model!r}: precision {config.precision} with engine onnxruntime on GPU needs the TensorRT "
            "execution provider (tensorrt.enabled: true); the CUDA provider runs the model as exported"
        )
    cuda = {
        "device_id": str(gpu),
        "cudnn_conv_algo_search": ort.cudnn_conv_algo_search,
        "do_copy_in_default_stream": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "use_tf32": "1" if ort.use_tf32 else "0",
    }
    plan.providers.append((CUDA_EP, cuda))
    plan.providers.append((CPU_EP, {}))  # ops neither GPU provider has (shape arithmetic) run here
    return plan


def tensorrt_options(config: ModelConfig, version_dir: Path, model: str = "") -> dict[str, str]:
    """The TensorRT execution provider's options from the model's ``tensorrt`` section."""
    trt = config.tensorrt
    if trt.shape_mode == "tuned":
        raise ModelLoadError(
            f"model {model!r}: tensorrt.shape_mode tuned is Paddle's collected shape file; with engine "
            "onnxruntime use dynamic (min/opt/max) or static"
        )
    name, dims = config.input.name, list(config.input.shape)
    given = trt.dynamic_shape
    if trt.shape_mode == "static":
        lo = opt = hi = _shape(name, dims, config.max_batch_size)
    elif given is not None:
        lo, opt, hi = (f"{name}:" + "x".join(map(str, s)) for s in (given.min, given.opt, given.max))
    else:
        lo, opt, hi = (
            _shape(name, dims, 1),
            _shape(name, dims, config.max_batch_size),
            _shape(name, dims, config.max_batch_size),
        )
    options = {
        "device_id": str(config.gpu_id),
        "trt_max_workspace_size": str(trt.workspace_size),
        "trt_min_subgraph_size": str(trt.min_subgraph_size),
        "trt_fp16_enable": "1" if config.precision in ("fp16", "int8") else "0",
        # A QDQ model (pdserve convert of a quantized version) carries its own scales: explicit INT8.
        "trt_int8_enable": "1" if config.precision == "int8" else "0",
        "trt_profile_min_shapes": lo,
        "trt_profile_opt_shapes": opt,
        "trt_profile_max_shapes": hi,
    }
    if trt.cache_dir:
        cache = Path(trt.cache_dir) / (model or "model") / version_dir.name / config.precision
        options |= {"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": "1"}
    return options


def create_session(plan: SessionPlan) -> Any:
    """An ``onnxruntime.InferenceSession`` for the plan; ``ModelLoadError`` when a provider is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelLoadError(
            "engine onnxruntime needs ONNX Runtime: pip install 'pdserve[onnx]' (CPU) or onnxruntime-gpu (CUDA)"
        ) from None
    available = ort.get_available_providers()
    wanted = plan.provider_names
    missing = [p for p in wanted if p not in available]
    if missing:
        hint = (
            " (set tensorrt.enabled: false to run on the CUDA provider)"
            if TRT_EP in missing and CUDA_EP in available
            else " (install onnxruntime-gpu instead of onnxruntime)"
            if CUDA_EP in missing
            else ""
        )
        raise ModelLoadError(f"ONNX Runtime {ort.__version__} has no {', '.join(missing)}{hint}; it has {available}")
    if CUDA_EP in wanted and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds cuDNN and cuBLAS in the nvidia-* pip packages only once they are
        # loaded (importing torch first does it too); a library it cannot find is reported below.
        ort.preload_dlls(msvc=False)
    options = ort.SessionOptions()
    for key, value in plan.options.items():
        if key == "graph_optimization_level":
            value = getattr(ort.GraphOptimizationLevel, value)
        elif key == "execution_mode":
            value = getattr(ort.ExecutionMode, value)
        setattr(options, key, value)
    for key, value in plan.entries.items():
        options.add_session_config_entry(key, value)
    for _name, provider_options in plan.providers:
        cache = provider_options.get("trt_engine_cache_path")
        if cache:
            Path(cache).mkdir(parents=True, exist_ok=True)
    session = ort.InferenceSession(str(plan.model_file), options, providers=plan.providers)
    running = session.get_providers()
    if running[:1] != wanted[:1]:  # ORT falls back silently when a provider fails to initialise
        raise ModelLoadError(
            f"ONNX Runtime did not start {wanted[0]} (running {running}): see the worker's log for why "
            "(for CUDA: cuDNN 9, cuBLAS and the CUDA runtime of the version onnxruntime-gpu was built for)"
        )
    return session


class _Input:
    def __init__(self, owner: OrtPredictor, name: str) -> None:
        self._owner, self.name = owner, name

    def reshape(self, shape: list[int]) -> None:
        """Nothing to do: the array given to ``copy_from_cpu`` carries its shape."""

    def copy_from_cpu(self, array: np.ndarray) -> None:
        self._owner.feeds[self.name] = array


class _Output:
    def __init__(self, owner: OrtPredictor, name: str) -> None:
        self._owner, self.name = owner, name

    def copy_to_cpu(self) -> np.ndarray:
        result: np.ndarray = self._owner.results[self.name]
        return result


class OrtPredictor:
    """An ONNX Runtime session behind the predictor methods pdserve's workers call."""

    def __init__(self, plan: SessionPlan) -> None:
        self.plan = plan
        self.session = create_session(plan)
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.feeds: dict[str, np.ndarray] = {}
        self.results: dict[str, np.ndarray] = {}
        # input shapes -> (session, IO binding or None); the first shape gets the session made above
        self._by_shape: dict[tuple[tuple[int, ...], ...], tuple[Any, Any]] = {}
        self._device_inputs: dict[tuple[str, tuple[int, ...], str], Any] = {}

    def get_input_names(self) -> list[str]:
        return list(self._inputs)

    def get_output_names(self) -> list[str]:
        return list(self._outputs)

    def get_input_handle(self, name: str) -> _Input:
        if name not in self._inputs:
            raise ModelLoadError(f"{self.plan.model_file}: no input {name!r}; inputs are {self._inputs}")
        return _Input(self, name)

    def get_output_handle(self, name: str) -> _Output:
        if name not in self._outputs:
            raise ModelLoadError(f"{self.plan.model_file}: no output {name!r}; outputs are {self._outputs}")
        return _Output(self, name)

    def _session(self) -> tuple[Any, Any]:
        key = tuple(self.feeds[name].shape for name in self._inputs if name in self.feeds)
        if not self.plan.session_per_shape:
            key = ()
        found = self._by_shape.get(key)
        if found is None:
            session = self.session if not self._by_shape else create_session(self.plan)
            found = (session, session.io_binding() if self.plan.io_binding else None)
            self._by_shape[key] = found
        return found

    def run(self) -> None:
        session, binding = self._session()
        values = session.run(self._outputs, self.feeds) if binding is None else self._run_bound(session, binding)
        self.results = dict(zip(self._outputs, values, strict=True))

    def _run_bound(self, session: Any, binding: Any) -> list[np.ndarray]:
        """Inputs into device buffers kept per name and shape (the padded batch sizes are few),
        outputs left where the GPU wrote them and copied back once."""
        import onnxruntime as ort

        device = self.plan.device_id or 0
        for name, array in self.feeds.items():
            array = np.ascontiguousarray(array)
            key = (name, array.shape, array.dtype.str)
            value = self._device_inputs.get(key)
            if value is None:
                value = ort.OrtValue.ortvalue_from_numpy(array, "cuda", device)
                self._device_inputs[key] = value
            else:
                value.update_inplace(array)
            binding.bind_ortvalue_input(name, value)
        for name in self._outputs:
            binding.bind_output(name, "cuda", device)
        session.run_with_iobinding(binding)
        outputs: list[np.ndarray] = binding.copy_outputs_to_cpu()
        binding.clear_binding_outputs()
        return outputs


Spec = tuple[str, str, tuple[int, ...]]  # name, numpy dtype, shape with -1 for free dimensions


def session_signature(session: Any, model_file: Path) -> tuple[list[Spec], list[Spec]]:
    """Inputs and outputs of an ONNX Runtime session, as the tensor worker describes them."""

    def spec(arg: Any) -> Spec:
        if arg.type not in _DTYPES:
            raise ModelLoadError(f"{model_file}: tensor {arg.name!r} has type {arg.type}, which pdserve cannot serve")
        return arg.name, _DTYPES[arg.type], tuple(d if isinstance(d, int) else -1 for d in arg.shape)

    return [spec(i) for i in session.get_inputs()], [spec(o) for o in session.get_outputs()]
