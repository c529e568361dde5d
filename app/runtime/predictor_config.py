"""What a model config means for ``paddle.inference.Config``: decided here, applied in the worker.

``plan_predictor`` is pure (no Paddle import) so what it decides for GPU/TensorRT can be tested on
the CPU-only build; ``build_predictor`` applies a plan to a real ``Config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ModelLoadError
from app.model_config import ModelConfig

GPU_MEMORY_POOL_MB = 256
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


def plan_predictor(config: ModelConfig, version_dir: Path, cuda_available: bool, model: str = "") -> PredictorPlan:
    """Turn a model config into the ``Config`` calls that serve it, or raise ``ModelLoadError``."""
    model_file, params_file = version_dir / "model.pdmodel", version_dir / "model.pdiparams"
    if not model_file.is_file() or not params_file.is_file():
        raise ModelLoadError(f"{version_dir}: needs model.pdmodel and model.pdiparams")
    plan = PredictorPlan(model_file, params_file)
    plan.add("disable_glog_info")
    plan.add("switch_ir_optim", True)
    # enable_memory_optim() breaks loading PIR model.json files (Paddle issue 75496); for the legacy
    # model.pdmodel we serve it is safe and cuts activation memory.
    plan.add("enable_memory_optim", True)

    gpu_id = config.gpu_id
    if gpu_id is None:
        if config.precision == "fp16":
            raise ModelLoadError(f"model {model!r}: precision fp16 needs device gpu:N; on CPU use fp32 or int8")
        plan.add("disable_gpu")
        plan.add("set_cpu_math_library_num_threads", config.cpu_threads)
        if config.engine == "openvino":
            plan.add("enable_openvino_engine", Precision("Int8" if config.precision == "int8" else "Float32"))
            return plan
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
    if trt.enabled:
        plan.add(
            "enable_tensorrt_engine",
            trt.workspace_size,
            config.max_batch_size,
            trt.min_subgraph_size,
            Precision(_TRT_PRECISION[config.precision]),
            trt.use_static,
            # A PTQ model carries its own scales; TensorRT calibration is only for an fp32 graph run as int8.
            trt.use_calib_mode and config.precision == "int8",
        )
        shape = trt.dynamic_shape
        c, h, w = config.input.shape
        mins = list(shape.min) if shape else [1, c, h, w]
        opts = list(shape.opt) if shape else [config.max_batch_size, c, h, w]
        maxs = list(shape.max) if shape else [config.max_batch_size, c, h, w]
        name = config.input.name
        plan.add("set_trt_dynamic_shape_info", {name: mins}, {name: maxs}, {name: opts})
        if trt.cache_dir:
            plan.add("set_optim_cache_dir", trt.cache_dir)
    elif config.precision != "fp32":
        raise ModelLoadError(f"model {model!r}: precision {config.precision} on GPU needs tensorrt.enabled: true")
    return plan


def build_predictor(plan: PredictorPlan) -> Any:
    """Apply a plan to a ``paddle.inference.Config`` and create the predictor (worker side only)."""
    from paddle import inference

    cfg = inference.Config(str(plan.model_file), str(plan.params_file))
    for method, args in plan.calls:
        resolved = [getattr(inference.PrecisionType, a.name) if isinstance(a, Precision) else a for a in args]
        getattr(cfg, method)(*resolved)
    return inference.create_predictor(cfg)


class LoadedPredictor:
    """A Paddle predictor for one model version, with its plan; used by workers and offline tools."""

    def __init__(self, config: ModelConfig, version_dir: Path, model: str = "") -> None:
        import paddle

        self.plan = plan_predictor(config, version_dir, paddle.device.is_compiled_with_cuda(), model)
        self.predictor = build_predictor(self.plan)
        self.input = self.predictor.get_input_handle(config.input.name)
        outputs = self.predictor.get_output_names()
        name = config.output.name or outputs[0]
        if name not in outputs:
            raise ModelLoadError(f"model {model!r}: output {name!r} not in model outputs {outputs}")
        self.output = self.predictor.get_output_handle(name)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.input.reshape(list(batch.shape))
        self.input.copy_from_cpu(np.ascontiguousarray(batch, np.float32))
        self.predictor.run()
        result: np.ndarray = self.output.copy_to_cpu()
        return result
