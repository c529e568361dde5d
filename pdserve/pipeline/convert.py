"""``pdserve convert``: a version's Paddle program as ``model.onnx`` (paddle2onnx), kept only if it
answers like Paddle on sample images.

The file is written beside the program as ``model.onnx.partial``, both engines run the same
preprocessed images on the CPU, and it becomes ``model.onnx`` only when the outputs agree: within
``tolerance`` everywhere and the same top-1 on every image. ``engine: onnxruntime`` in the config
then serves it. An INT8 model for ONNX Runtime is made from the FP32 ``model.onnx`` by
``quantize_onnx`` (paddle2onnx cannot read Paddle's own INT8 programs).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.pipeline.dataset import Sample, batches, load_images
from pdserve.pipeline.errors import GateFailed, PipelineError
from pdserve.pipeline.local import LocalModel
from pdserve.runtime.onnx_engine import ONNX_FILE, plan_session
from pdserve.runtime.predictor_config import LoadedPredictor, is_quantized, model_files

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
BATCH = 8


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """paddle2onnx's C++ side prints progress to file descriptor 1; keep stdout for --json."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def paddle_to_onnx(model_file: Path, params_file: Path, opset: int) -> bytes:
    """The ONNX bytes of a legacy Paddle program, through paddle2onnx (the ``onnx`` extra)."""
    try:
        import paddle2onnx
    except ImportError as exc:
        raise PipelineError(f"pdserve convert needs paddle2onnx: pip install 'pdserve[onnx]' ({exc})") from None
    # save_file=None returns the bytes and skips paddle2onnx's Polygraphy folding pass, which pip-installs
    # its own dependencies at run time (POLYGRAPHY_AUTOINSTALL_DEPS); ONNX Runtime folds constants itself.
    try:
        with _stdout_to_stderr():
            data = paddle2onnx.export(
                str(model_file), str(params_file), None, opset_version=opset, deploy_backend="onnxruntime"
            )
    except UnboundLocalError:  # paddle2onnx logs the real error and then returns a name it never bound
        data = None
    if not data:
        raise PipelineError(f"paddle2onnx could not convert {model_file} (its log above says why)")
    return bytes(data)


def _outputs(runner: LoadedPredictor, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runner.run(batch) for batch in batches(images, BATCH)])


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Max absolute difference and top-1 agreement of two output arrays (rows are images)."""
    top_ref, top_new = reference.argmax(axis=1), candidate.argmax(axis=1)
    return {
        "images": len(reference),
        "max_abs_diff": float(np.abs(reference.astype(np.float64) - candidate).max()),
        "top1_equal": int((top_ref == top_new).sum()),
        "top1_differ": [int(i) for i in np.flatnonzero(top_ref != top_new)],
    }


def parity_failure(result: dict[str, Any], tolerance: float) -> str | None:
    """Why the converted model may not be kept, or None."""
    differ = result["images"] - result["top1_equal"]
    if differ:
        return f"top-1 differs from Paddle on {differ} of {result['images']} images"
    if result["max_abs_diff"] > tolerance:
        return f"outputs differ from Paddle by up to {result['max_abs_diff']:.3g} (tolerance {tolerance:g})"
    return None


def convert_model(
    model_dir: Path,
    samples: list[Sample],
    *,
    version: int | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
) -> dict[str, Any]:
    """Write ``model.onnx`` into the version folder if it passes the parity check; returns the report."""
    if not samples:
        raise PipelineError("pdserve convert checks the converted model on images: give --label-list or --data-dir")
    model = LocalModel.open(model_dir, version)
    config = model.config.model_copy(update={"device": "cpu", "engine": "onednn"})
    if config.kind != "image":
        raise PipelineError(f"{model_dir}: pdserve convert checks image models only (kind {config.kind})")
    version_dir = model.version_dir
    target = version_dir / ONNX_FILE
    if target.exists() and not force:
        raise PipelineError(f"{target} exists already; --force replaces it")
    model_file, params_file = model_files(version_dir)
    quantized = is_quantized(model_file)
    if quantized:
        raise PipelineError(
            f"{model_file} holds Paddle's quantize/dequantize ops, which paddle2onnx 2.1.0 takes for FP8 and "
            "aborts on: convert the FP32 model, then make the INT8 one with pdserve convert --int8-output"
        )
    start = time.perf_counter()
    data = paddle_to_onnx(model_file, params_file, opset)
    seconds = time.perf_counter() - start
    partial = version_dir / (ONNX_FILE + ".partial")
    partial.write_bytes(data)
    try:
        images = load_images(samples, config.preprocessing, "parity images")
        reference = _outputs(LoadedPredictor(config, version_dir, model.name), images)
        ort_config = config.model_copy(update={"engine": "onnxruntime"})
        plan = plan_session(ort_config, version_dir, model.name, model_file=partial)
        converted = _outputs(LoadedPredictor(ort_config, version_dir, model.name, plan=plan), images)
        result = compare(reference, converted)
        failure = parity_failure(result, tolerance)
        if failure is not None:
            raise GateFailed(f"{partial.name} not kept: {failure}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    import onnxruntime
    import paddle2onnx

    return {
        "model_dir": str(model_dir),
        "version": model.version,
        "onnx_file": str(target),
        "bytes": target.stat().st_size,
        "opset": opset,
        "seconds": round(seconds, 1),
        "tolerance": tolerance,
        "paddle2onnx": paddle2onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        **{k: v for k, v in result.items() if k != "top1_differ"},
        "top1_differ": result["top1_differ"][:20],
    }


def format_convert_report(result: dict[str, Any]) -> str:
    return (
        f"wrote {result['onnx_file']} ({result['bytes'] / 2**20:.1f} MiB, opset {result['opset']}, "
        f"{result['seconds']} s): on {result['images']} images max |ONNX Runtime - Paddle| "
        f"{result['max_abs_diff']:.2g}, top-1 equal on {result['top1_equal']}"
    )


class _Calibration:
    """ONNX Runtime's calibration reader over preprocessed images, ``BATCH`` at a time."""

    def __init__(self, name: str, images: np.ndarray) -> None:
        self._batches = iter([{name: b} for b in batches(images, BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_onnx(
    model_dir: Path,
    output: Path,
    samples: list[Sample],
    *,
    method: str = "Percentile",
    reduce_range: bool = True,
) -> dict[str, Any]:
    """An INT8 QDQ copy of a model's ``model.onnx`` (ONNX Runtime static quantization), as a new model
    folder ``output`` served by ``engine: onnxruntime``.

    paddle2onnx 2.1.0 aborts on the quantize/dequantize ops of Paddle's own INT8 programs (it takes
    them for FP8), so ONNX Runtime quantizes the FP32 ONNX model itself: weights per channel INT8,
    activations UINT8, scales from ``samples``. ``reduce_range`` (7-bit weights) keeps the sums of
    pairs of products inside int16 on CPUs without VNNI (the AVX2 path), as ONNX Runtime advises."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from pdserve.pipeline.export import write_config

    model = LocalModel.open(model_dir)
    source = model.version_dir / ONNX_FILE
    if not source.is_file():
        raise PipelineError(f"{source} not found: run pdserve convert {model_dir} first")
    if not samples:
        raise PipelineError("quantization needs calibration images (--label-list or --data-dir)")
    version_dir = output / "1"
    if version_dir.exists():
        raise PipelineError(f"{version_dir} exists already")
    version_dir.mkdir(parents=True)
    images = load_images(samples, model.config.preprocessing, "calibration images")
    start = time.perf_counter()
    quantize_static(
        str(source),
        str(version_dir / ONNX_FILE),
        _Calibration(model.config.input.name, images),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        # Histograms from a few batches at a time: holding every activation of 200 images at once
        # was killed for memory here (Percentile, Entropy).
        extra_options={"CalibMaxIntermediateOutputs": 5},
    )
    calibration = {
        "tool": "onnxruntime.quantization.quantize_static (QDQ)",
        "algo": method,
        "per_channel": True,
        "reduce_range": reduce_range,
        "images": len(samples),
        "from_model": model_dir.name,
    }
    doc = {
        **model.config.model_dump(mode="json", exclude_defaults=True, exclude={"tuned", "calibration"}),
        "description": f"{model.config.description} INT8 (ONNX Runtime QDQ)".strip(),
        "engine": "onnxruntime",
        "precision": "int8",
        "calibration": calibration,
    }
    if model.config.labels is not None:
        (output / model.config.labels).write_bytes((model_dir / model.config.labels).read_bytes())
    write_config(output, doc)
    return {
        "model_dir": str(output),
        "onnx_file": str(version_dir / ONNX_FILE),
        "bytes": (version_dir / ONNX_FILE).stat().st_size,
        "seconds": round(time.perf_counter() - start, 1),
        **calibration,
    }
