"""``pdserve quantize``: post-training static INT8 quantization of a repository model.

Uses Paddle's own ``paddle.static.quantization.PostTrainingQuantization(onnx_format=True)``, which
was measured to produce the same model as PaddleSlim's ``quant_post_static`` (whose pinned
dependencies install ``opencv-python==4.6`` and break ``import cv2`` with numpy 2). The function
below keeps ``quant_post_static``'s parameter names so PaddleSlim users feel at home.
"""

from __future__ import annotations

import datetime as dt
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from app.model_config import CONFIG_FILE
from app.pipeline.dataset import PipelineError, Sample, load_images
from app.pipeline.evaluate import LocalModel
from app.pipeline.export import next_version, require_legacy_format, write_config

ALGOS = ("KL", "hist", "mse", "avg", "abs_max")
DEFAULT_OP_TYPES = ("conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2")


def quant_post_static(
    executor: Any,
    model_dir: str,
    quantize_model_path: str,
    data_loader: Callable[[], Iterator[dict[str, np.ndarray]]],
    model_filename: str = "model.pdmodel",
    params_filename: str = "model.pdiparams",
    save_model_filename: str = "model.pdmodel",
    save_params_filename: str = "model.pdiparams",
    batch_size: int = 10,
    batch_nums: int | None = None,
    algo: str = "KL",
    round_type: str = "round",
    hist_percent: float = 0.9999,
    bias_correction: bool = False,
    quantizable_op_type: tuple[str, ...] = DEFAULT_OP_TYPES,
    is_full_quantize: bool = False,
    weight_bits: int = 8,
    activation_bits: int = 8,
    activation_quantize_type: str = "range_abs_max",
    weight_quantize_type: str = "channel_wise_abs_max",
    onnx_format: bool = True,
) -> None:
    """Same parameters as ``paddleslim.quant.quant_post_static``; Paddle's PTQ underneath."""
    from paddle.static.quantization import PostTrainingQuantization

    if algo not in ALGOS:
        raise PipelineError(f"unknown algo {algo!r}; choose from {', '.join(ALGOS)}")
    ptq = PostTrainingQuantization(
        executor=executor,
        model_dir=model_dir,
        model_filename=model_filename,
        params_filename=params_filename,
        data_loader=data_loader,
        batch_size=batch_size,
        batch_nums=batch_nums,
        algo=algo,
        round_type=round_type,
        hist_percent=hist_percent,
        bias_correction=bias_correction,
        quantizable_op_type=list(quantizable_op_type),
        is_full_quantize=is_full_quantize,
        weight_bits=weight_bits,
        activation_bits=activation_bits,
        activation_quantize_type=activation_quantize_type,
        weight_quantize_type=weight_quantize_type,
        onnx_format=onnx_format,
    )
    ptq.quantize()
    ptq.save_quantized_model(quantize_model_path, save_model_filename, save_params_filename)


def _versions() -> dict[str, str]:
    import paddle

    return {
        "paddle": paddle.version.full_version,
        "paddle_commit": paddle.version.commit,
        "python": platform.python_version(),
    }


CALIBRATION_IMAGES = "calibration_images.txt"


def quantize_repository_model(
    model_dir: Path,
    output: Path,
    samples: list[Sample],
    source: str,
    *,
    version: int | None = None,
    algo: str = "KL",
    batch_size: int = 10,
    batch_nums: int | None = None,
    hist_percent: float = 0.9999,
    weight_quantize_type: str = "channel_wise_abs_max",
    is_full_quantize: bool = False,
    onnx_format: bool = True,
) -> dict[str, Any]:
    """Quantize a version of ``model_dir`` into a new model folder (or a new version of it)."""
    import paddle

    require_legacy_format()
    if algo not in ALGOS:
        raise PipelineError(f"unknown algo {algo!r}; choose from {', '.join(ALGOS)}")
    source_model = LocalModel.open(model_dir, version)
    config, src_version, src_dir = source_model.config, source_model.version, source_model.version_dir
    if config.precision != "fp32":
        raise PipelineError(f"{model_dir} is {config.precision}; quantize an fp32 model")
    if not (src_dir / "model.pdmodel").is_file():
        raise PipelineError(f"{src_dir}/model.pdmodel not found (export with FLAGS_enable_pir_api=0)")
    batch_nums = batch_nums or max(1, len(samples) // batch_size)
    used = samples[: batch_nums * batch_size]
    if len(used) < batch_size:
        raise PipelineError(f"need at least --batch-size ({batch_size}) calibration images, got {len(samples)}")
    images = load_images(used, config.preprocessing, "calibration images")

    def data_loader() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(images), batch_size):
            yield {config.input.name: images[start : start + batch_size]}

    output.mkdir(parents=True, exist_ok=True)
    out_version = next_version(output)
    started = time.perf_counter()
    paddle.enable_static()
    try:
        quant_post_static(
            executor=paddle.static.Executor(paddle.CPUPlace()),
            model_dir=str(src_dir),
            quantize_model_path=str(output / str(out_version)),
            data_loader=data_loader,
            batch_size=batch_size,
            batch_nums=len(used) // batch_size,
            algo=algo,
            hist_percent=hist_percent,
            is_full_quantize=is_full_quantize,
            weight_quantize_type=weight_quantize_type,
            onnx_format=onnx_format,
        )
    finally:
        paddle.disable_static()
    seconds = time.perf_counter() - started
    record = {
        "algo": algo,
        "images": len(used),
        "batch_size": batch_size,
        "batch_nums": len(used) // batch_size,
        "hist_percent": hist_percent,
        "weight_quantize_type": weight_quantize_type,
        "onnx_format": onnx_format,
        "source": source,
        "image_list": CALIBRATION_IMAGES,
        "from_model": f"{model_dir.name}/{src_version}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(seconds, 1),
        "tools": _versions(),
    }
    if not (output / CONFIG_FILE).exists():
        doc = config.model_dump(mode="json", exclude_none=True)
        doc.update(
            precision="int8",
            description=f"{config.description} - INT8 post-training quantization ({algo}, {len(used)} images)",
            calibration=record,
        )
        write_config(output, doc)
        # Exactly which images calibrated it, so that evaluate can refuse to measure on them.
        (output / CALIBRATION_IMAGES).write_text("".join(f"{s.path.name} {s.label}\n" for s in used))
        if config.labels:
            shutil.copyfile(model_dir / config.labels, output / config.labels)
    return {"model_dir": str(output), "version": out_version, **record}
