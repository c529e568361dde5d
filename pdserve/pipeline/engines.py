"""``pdserve collect-shapes`` and ``pdserve build-engines``: TensorRT work done before serving.

``collect-shapes`` runs images through a predictor that records every tensor's shape range and stores
the file in the version folder, where ``tensorrt.shape_mode: tuned`` reads it.

``build-engines`` creates, for every model and version a server would load, the predictor the
server's worker creates (same plan, same overrides from the environment) and runs each batch size the
worker warms up, so TensorRT builds and serializes its engines into the keyed cache folder. Run in an
init container, it moves minutes of engine building out of the serving container's startup probe.
Models without TensorRT have nothing to build and are listed as skipped.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.errors import PdserveError
from pdserve.model_config import ModelConfig
from pdserve.pipeline.dataset import Sample, load_images
from pdserve.pipeline.errors import PipelineError
from pdserve.pipeline.local import LocalModel
from pdserve.repository import Overrides, model_folders, scan_model
from pdserve.runtime.predictor_config import (
    SHAPE_FILE,
    LoadedPredictor,
    PredictorPlan,
    plan_shape_collection,
    read_shape_ranges,
)


def collect_shapes(model: LocalModel, samples: list[Sample]) -> dict[str, Any]:
    """Record shape ranges for every batch size the server runs; write ``SHAPE_FILE`` next to the model."""
    import paddle

    config = model.config
    if config.tensorrt.shape_mode == "static":
        raise PipelineError(f"{model.path}: tensorrt.shape_mode static has one shape; there is nothing to collect")
    if not samples:
        raise PipelineError("collect-shapes needs images (--data-dir or --label-list)")
    cuda = bool(paddle.device.is_compiled_with_cuda())
    target = model.version_dir / SHAPE_FILE
    partial = target.with_suffix(".partial")
    plan = plan_shape_collection(config, model.version_dir, cuda, partial, model.name)
    images = load_images(samples, config.preprocessing, "collecting shapes")
    sizes = sorted({1, *config.padded_batch_sizes, config.max_batch_size})
    runner = LoadedPredictor(config, model.version_dir, model.name, plan=plan)
    for size in sizes:  # images repeat when there are fewer than the batch size
        runner.run(images[np.arange(size) % len(images)])
    del runner
    gc.collect()  # Paddle writes the file when the predictor is destroyed
    if not partial.is_file():
        raise PipelineError(f"Paddle wrote no shape file to {partial}")
    ranges = read_shape_ranges(partial)
    if config.input.name not in ranges:
        raise PipelineError(f"the collected shapes have no entry for input {config.input.name!r}")
    partial.replace(target)
    found = ranges[config.input.name]
    return {
        "model_dir": str(model.path),
        "version": model.version,
        "shape_file": str(target),
        "device": config.device if cuda and config.gpu_id is not None else "cpu",
        "images": len(samples),
        "batch_sizes": sizes,
        "tensors": len(ranges),
        "input": {"name": config.input.name, **found},
    }


def build_engines(repo: Path, overrides: Overrides, models: list[str] | None = None) -> list[dict[str, Any]]:
    """Build and cache the TensorRT engines of every model (or of ``models``) in a repository."""
    folders = model_folders(repo)
    if models:
        missing = sorted(set(models) - {p.name for p in folders})
        if missing:
            raise PipelineError(f"{repo} has no model folder {', '.join(missing)}")
        folders = [p for p in folders if p.name in models]
    results = []
    for folder in folders:
        entry = scan_model(folder, overrides, quiet=True)
        if entry.config is None:
            results.append({"model": entry.name, "status": "failed", "reason": entry.error})
            continue
        for version in entry.versions.values():
            results.append(_build(entry.name, version.version, version.path, entry.config))
    return results


def _build(model: str, version: int, version_dir: Path, config: ModelConfig) -> dict[str, Any]:
    result: dict[str, Any] = {"model": model, "version": version, "device": config.device}
    trt = config.tensorrt
    if config.engine == "onnxruntime":  # its TensorRT provider builds into trt_engine_cache_path on first use
        return {**result, "status": "skipped", "reason": "engine onnxruntime: no Paddle engines to build"}
    if config.gpu_id is None or not trt.enabled:
        reason = "device cpu" if config.gpu_id is None else "tensorrt.enabled is false"
        return {**result, "status": "skipped", "reason": f"{reason}: no TensorRT engines to build"}
    if not trt.cache_dir or not trt.use_static:
        return {
            **result,
            "status": "failed",
            "reason": "no engine cache: set PDSERVE_TRT_CACHE_DIR (or tensorrt.cache_dir with use_static: true); "
            "engines built without one are thrown away when the process ends",
        }
    start = time.perf_counter()
    try:
        runner = LoadedPredictor(config, version_dir, model)
        batch = np.zeros((max(config.padded_batch_sizes), *config.input.shape), np.float32)
        for size in config.padded_batch_sizes:  # the sizes the worker warms up
            runner.run(batch[:size])
        assert isinstance(runner.plan, PredictorPlan)  # engine onnxruntime returned above
        cache = runner.plan.args("set_optim_cache_dir")[0]
        del runner
        gc.collect()
    except PdserveError as exc:
        return {**result, "status": "failed", "reason": exc.message}
    except Exception as exc:  # Paddle's own errors (no TensorRT, a failing converter)
        return {**result, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    return {
        **result,
        "status": "built",
        "cache_dir": cache,
        "batch_sizes": list(config.padded_batch_sizes),
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_build_report(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        where = f"{r['model']}/{r['version']}" if "version" in r else r["model"]
        detail = r.get("cache_dir") or r.get("reason", "")
        extra = f" in {r['seconds']} s" if "seconds" in r else ""
        lines.append(f"{where}: {r['status']}{extra} ({detail})")
    return "\n".join(lines)
