"""``pdserve bench``: in-process latency and throughput, reported the way Paddle's inference guide
does (AutoLog): environment, configuration, model, data, performance."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.gpu_metrics import GpuMonitor
from pdserve.kinds.image import top_k
from pdserve.pipeline.dataset import Sample
from pdserve.pipeline.local import LocalModel
from pdserve.preprocess import load_and_preprocess


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process, from /proc (NaN where there is no /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def environment() -> dict[str, Any]:
    import paddle

    env: dict[str, Any] = {
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "paddle": paddle.version.full_version,
        "paddle_commit": paddle.version.commit,
        "cuda": None,
        "cudnn": None,
        "tensorrt": None,
    }
    if paddle.device.is_compiled_with_cuda():
        env.update(cuda=paddle.version.cuda(), cudnn=paddle.version.cudnn())
        env["tensorrt"] = ".".join(str(v) for v in paddle.inference.get_trt_compile_version())
    return env


def configuration(model: LocalModel, methods: list[str]) -> dict[str, Any]:
    c = model.config
    return {
        "device": c.device,
        "ir_optim": "switch_ir_optim" in methods,
        "memory_optim": "enable_memory_optim" in methods,
        "tensorrt": "enable_tensorrt_engine" in methods,
        "onednn": "enable_mkldnn" in methods,
        "onednn_int8": "enable_mkldnn_int8" in methods,
        "cpu_math_library_num_threads": c.cpu_threads,
        "openvino": False,
    }


def bench_model(
    model: LocalModel, batch_sizes: list[int], iterations: int, warmup: int, samples: list[Sample]
) -> list[dict[str, Any]]:
    """One report per batch size. Inputs are real images when given, else random. GPU memory and
    utilisation come from NVML where there is a GPU, else they are None."""
    gpus = GpuMonitor()
    predictor = model.predictor()
    spec = model.config.preprocessing
    shape = model.config.input.shape
    if samples:
        raw = [s.path.read_bytes() for s in samples]
        start = time.perf_counter()
        images = np.stack([load_and_preprocess(b, spec, 10**9) for b in raw])
        preprocess_ms = (time.perf_counter() - start) * 1000 / len(raw)
    else:
        images = np.random.default_rng(0).standard_normal((max(batch_sizes), *shape)).astype(np.float32)
        preprocess_ms = float("nan")
    env, config = environment(), configuration(model, predictor.plan.methods())
    reports = []
    for batch_size in batch_sizes:
        batch = np.resize(images, (batch_size, *shape)).astype(np.float32)
        for _ in range(warmup):
            predictor.run(batch)
        times = []
        out = np.empty((0, 0), np.float32)
        for _ in range(iterations):
            start = time.perf_counter()
            out = predictor.run(batch)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for row in out:
            top_k(row, 5, None)
        postprocess_ms = (time.perf_counter() - start) * 1000 / len(out)
        ms = np.array(times) * 1000
        gpu = gpus.summary()  # read right after the timed runs: what this model left in use
        reports.append(
            {
                "environment": env,
                "configuration": config,
                "model": {"name": model.name, "version": model.version, "precision": model.config.precision},
                "data": {
                    "batch_size": batch_size,
                    "input_shape": [batch_size, *shape],
                    "images": len(samples) if samples else 0,
                    "iterations": iterations,
                },
                "performance": {
                    "cpu_rss_mib": round(rss_mib(), 1),
                    "gpu_memory_mib": gpu["gpu_memory_mib"],
                    "gpu_utilization": gpu["gpu_utilization"],
                    "preprocess_ms_per_image": round(preprocess_ms, 3),
                    "inference_ms_per_batch": round(float(ms.mean()), 3),
                    "postprocess_ms_per_image": round(postprocess_ms, 4),
                    "p50_ms": round(float(np.percentile(ms, 50)), 3),
                    "p90_ms": round(float(np.percentile(ms, 90)), 3),
                    "p99_ms": round(float(np.percentile(ms, 99)), 3),
                    "images_per_s": round(batch_size * 1000 / float(ms.mean()), 2),
                },
            }
        )
    return reports


def format_bench_report(reports: list[dict[str, Any]]) -> str:
    """The first report's environment, then one block per model and batch size."""
    if not reports:
        return "no results"
    lines = ["----------------------- environment -----------------------"]
    lines += [f"{k:>30}: {v}" for k, v in reports[0]["environment"].items()]
    for r in reports:
        m = r["model"]
        title = f"{m['name']} v{m['version']} ({m['precision']}), batch {r['data']['batch_size']}"
        lines.append(f"------------- {title} -------------")
        for section in ("configuration", "data", "performance"):
            lines += [f"{section + '.' + k:>42}: {v}" for k, v in r[section].items()]
    return "\n".join(lines)
