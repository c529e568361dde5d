"""pdserve on a GPU through ONNX Runtime's CUDA provider: served over HTTP against its two limits.

One run measures, on the machine it runs on:

1. the host's decode limit: the server's own decode + resize + crop (``pdserve.preprocess.load_and_crop``)
   of the JPEGs in 1 process and in one process per core;
2. the model in-process on the GPU (``LoadedPredictor``, the worker's code, ``engine: onnxruntime``,
   ``device: gpu:0``) at each batch size, with and without IO binding, from preprocessed arrays;
   and its outputs against ONNX Runtime on the CPU (max difference, top-1);
3. ``pdserve serve`` with the model on gpu:0 (1 and 2 instances, max batch 256): closed loops of
   1, 16, 64 and 256 clients posting JPEGs to /predict, each answer's top-1 checked against the
   in-process one; requests/s, p50/p99, CPU per request of the server's process tree, and NVML
   utilisation and memory read from the server's own ``/metrics`` during the load;
4. where the time goes at the highest load: the server's batch size, queue wait and compute
   histograms, and CPU seconds per process (HTTP process, workers, load generator).

    python benchmarks/gpu_serving.py --model model_repo/efficientnet_lite0 --images DIR --out gpu.json

The load generator runs in several processes (one Python event loop tops out near a few
thousand requests/s), so that it is not the limit being measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from pdserve.model_config import load_model_config
from pdserve.pipeline.loadgen import Request, Target, closed_loop, percentile, run
from pdserve.pipeline.served import Served, cpu_seconds
from pdserve.preprocess import Normalizer, load_and_crop
from pdserve.runtime.predictor_config import LoadedPredictor

MAX_PIXELS = 40_000_000


def read_jpegs(folder: Path, limit: int) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:limit]
    return [p.read_bytes() for p in files]


# ---- 1. decode limit ---------------------------------------------------------------------------
def _decode_for(args: tuple[list[bytes], Any, float]) -> int:
    jpegs, spec, seconds = args
    count, stop = 0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        load_and_crop(jpegs[count % len(jpegs)], spec, MAX_PIXELS)
        count += 1
    return count


def decode_limit(jpegs: list[bytes], spec: Any, processes: int, seconds: float) -> float:
    os.environ["OMP_NUM_THREADS"] = "1"
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        start = time.perf_counter()
        counts = pool.map(_decode_for, [(jpegs, spec, seconds)] * processes)
        return sum(counts) / (time.perf_counter() - start)


# ---- 2. in-process GPU -------------------------------------------------------------------------
def in_process(
    config: Any, version_dir: Path, batches: list[int], images: np.ndarray, seconds: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for binding in (False, True):
        cfg = config.model_copy(update={"onnxruntime": config.onnxruntime.model_copy(update={"io_binding": binding})})
        runner = LoadedPredictor(cfg, version_dir, "bench")
        for batch in batches:
            x = images[np.arange(batch) % len(images)]
            for _ in range(3):
                runner.run(x)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                runner.run(x)
                n += 1
            elapsed = time.perf_counter() - start
            out[f"{'iobinding' if binding else 'run'}_b{batch}"] = {
                "images_per_s": round(n * batch / elapsed, 1),
                "ms_per_batch": round(1000 * elapsed / n, 3),
            }
            print(f"in-process io_binding={binding} batch {batch}: {n * batch / elapsed:.0f} images/s", flush=True)
        del runner
    return out


def parity(config: Any, version_dir: Path, images: np.ndarray) -> dict[str, Any]:
    gpu = LoadedPredictor(config, version_dir, "bench")
    cpu = LoadedPredictor(config.model_copy(update={"device": "cpu", "cpu_threads": 4}), version_dir, "bench")
    a = np.concatenate([gpu.run(images[i : i + 32]) for i in range(0, len(images), 32)])
    b = np.concatenate([cpu.run(images[i : i + 32]) for i in range(0, len(images), 32)])
    return {
        "images": len(images),
        "max_abs_diff_gpu_vs_cpu": float(np.abs(a - b).max()),
        "top1_equal": int((a.argmax(1) == b.argmax(1)).sum()),
        "top1": [int(t) for t in a.argmax(1)],
    }


# ---- 3. served ---------------------------------------------------------------------------------
def _load_part(args: tuple[int, list[bytes], int, float]) -> dict[str, Any]:
    port, jpegs, clients, seconds = args
    requests = [Request(j, path="/predict?top_k=1") for j in jpegs]
    target = Target("127.0.0.1", port)
    cpu0 = time.process_time()
    results, elapsed = run(closed_loop(target, lambda i: requests[i % len(requests)], clients, seconds))
    target.close()
    ok = [r.latency_s for r in results if r.status == 200]
    return {
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "latencies": ok,
        "elapsed": elapsed,
        "cpu_s": time.process_time() - cpu0,
        "statuses": sorted({r.status for r in results}),
    }


def _check_answers(port: int, jpegs: list[bytes], expected: list[int]) -> int:
    wrong = 0
    with httpx.Client(timeout=60) as client:
        for jpeg, want in zip(jpegs, expected, strict=True):
            r = client.post(
                f"http://127.0.0.1:{port}/predict?top_k=1", content=jpeg, headers={"content-type": "image/jpeg"}
            )
            r.raise_for_status()
            wrong += int(r.json()["predictions"][0]["class_id"] != want)
    return wrong


_SERIES = re.compile(r"^(pdserve_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def scrape(url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        m = _SERIES.match(line)
        if m:
            values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return values


class MetricsSampler:
    """Scrapes /metrics every ``period`` s while the load runs: NVML utilisation and memory."""

    def __init__(self, url: str, period: float = 0.5) -> None:
        self.url, self.period = url, period
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            with contextlib.suppress(httpx.HTTPError):
                self.samples.append(scrape(self.url))

    def __enter__(self) -> MetricsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def gpu(self) -> dict[str, Any]:
        util = [v for s in self.samples for k, v in s.items() if k.startswith("pdserve_gpu_utilization_percent")]
        mem = [v for s in self.samples for k, v in s.items() if k.startswith("pdserve_gpu_memory_used_bytes")]
        return {
            "samples": len(self.samples),
            "gpu_util_mean": round(float(np.mean(util)), 1) if util else None,
            "gpu_util_max": max(util) if util else None,
            "gpu_memory_mib_max": round(max(mem) / 2**20) if mem else None,
        }


def histogram_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    out = {}
    for name in (
        "pdserve_batch_size",
        "pdserve_queue_wait_seconds",
        "pdserve_inference_compute_seconds",
        "pdserve_request_duration_seconds",
    ):
        total = sum(v for k, v in after.items() if k.startswith(name + "_sum")) - sum(
            v for k, v in before.items() if k.startswith(name + "_sum")
        )
        count = sum(v for k, v in after.items() if k.startswith(name + "_count")) - sum(
            v for k, v in before.items() if k.startswith(name + "_count")
        )
        if count:
            out[name.removeprefix("pdserve_") + "_mean"] = round(
                total / count * (1 if name.endswith("size") else 1000), 3
            )
            out[name.removeprefix("pdserve_") + "_count"] = count
    return out


def process_cpu(served: Served) -> dict[str, float]:
    root = served.proc.pid
    pids = served.pids()
    http = cpu_seconds([root])
    return {"http_process_s": http, "workers_s": cpu_seconds([p for p in pids if p != root])}


def serve_and_load(
    device: str,
    model_dir: Path,
    instances: int,
    max_batch: int,
    delay_ms: float,
    decode_threads: int,
    jpegs: list[bytes],
    expected: list[int],
    client_counts: list[int],
    seconds: float,
    loaders: int,
) -> list[dict[str, Any]]:
    repo = Path(tempfile.mkdtemp(prefix="pdserve-gpu-"))
    folder = repo / model_dir.name
    shutil.copytree(model_dir, folder, symlinks=False)
    doc = yaml.safe_load((folder / "config.yaml").read_text())
    doc.update(
        engine="onnxruntime",
        device=device,
        tensorrt={"enabled": False},
        instances=instances,
        max_batch_size=max_batch,
        max_queue_delay_ms=delay_ms,
        max_queue_size=4096,
        trim_batches=False,
    )
    (folder / "config.yaml").write_text(yaml.safe_dump(doc))
    env = {"PDSERVE_DECODE_THREADS": str(decode_threads), "PDSERVE_MAX_INFLIGHT_REQUESTS": "4096"}
    rows = []
    with Served(repo, env=env) as served:
        wrong = _check_answers(served.port, jpegs[:32], expected[:32])
        for clients in client_counts:
            parts = min(loaders, clients)
            split = [clients // parts + (1 if i < clients % parts else 0) for i in range(parts)]
            with multiprocessing.get_context("spawn").Pool(parts) as pool:
                pool.map(_load_part, [(served.port, jpegs, c, 2.0) for c in split])  # warm-up
                before, cpu0 = scrape(served.url), process_cpu(served)
                with MetricsSampler(served.url) as sampler:
                    results = pool.map(_load_part, [(served.port, jpegs, c, seconds) for c in split])
                after, cpu1 = scrape(served.url), process_cpu(served)
            ok = sum(r["ok"] for r in results)
            latencies = [1000 * x for r in results for x in r["latencies"]]
            elapsed = max(r["elapsed"] for r in results)
            cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
            row = {
                "instances": instances,
                "max_batch_size": max_batch,
                "clients": clients,
                "requests_per_s": round(ok / elapsed, 1),
                "p50_ms": round(percentile(latencies, 50), 2),
                "p99_ms": round(percentile(latencies, 99), 2),
                "errors": sum(r["errors"] for r in results),
                "wrong_top1_of_32": wrong,
                "server_cpu_ms_per_request": round(1000 * sum(cpu.values()) / max(ok, 1), 3),
                "http_process_cpu_ms_per_request": round(1000 * cpu["http_process_s"] / max(ok, 1), 3),
                "worker_cpu_ms_per_request": round(1000 * cpu["workers_s"] / max(ok, 1), 3),
                "http_process_cores_busy": round(cpu["http_process_s"] / elapsed, 2),
                "loadgen_cores_busy": round(sum(r["cpu_s"] for r in results) / elapsed, 2),
                **sampler.gpu(),
                **histogram_means(before, after),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    shutil.rmtree(repo, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder whose newest version has model.onnx")
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEGs")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--decode-threads", type=int, default=12)
    parser.add_argument("--loaders", type=int, default=3, help="load generator processes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--skip", nargs="*", default=[], choices=["decode", "inprocess", "served"])
    parser.add_argument("--device", default="gpu:0", help="cpu: a smoke test of this script where there is no GPU")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    config = load_model_config(args.model).model_copy(update={"engine": "onnxruntime", "device": args.device})
    config = config.model_copy(update={"tensorrt": config.tensorrt.model_copy(update={"enabled": False})})
    version_dir = args.model / str(max(int(p.name) for p in args.model.iterdir() if p.name.isdigit()))
    jpegs = read_jpegs(args.images, args.limit)
    spec = config.preprocessing
    crops = np.stack([load_and_crop(j, spec, MAX_PIXELS) for j in jpegs])
    images = Normalizer(spec)(crops)
    report: dict[str, Any] = {
        "images": len(jpegs),
        "cores": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
        report["providers"] = onnxruntime.get_available_providers()
        import pynvml  # type: ignore[import-not-found,unused-ignore]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        report["gpu"] = str(pynvml.nvmlDeviceGetName(handle))
    except Exception as exc:
        report["gpu"] = f"unknown ({exc})"
    print(json.dumps({k: report[k] for k in report if k != "args"}), flush=True)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=1))

    if "decode" not in args.skip:
        cores = os.cpu_count() or 1
        report["decode_images_per_s"] = {
            "1 process": round(decode_limit(jpegs, spec, 1, 3.0), 1),
            f"{cores} processes": round(decode_limit(jpegs, spec, cores, 4.0), 1),
        }
        print("decode limit", report["decode_images_per_s"], flush=True)
        save()
    report["parity"] = parity(config, version_dir, images)
    expected = report["parity"]["top1"]
    print({k: v for k, v in report["parity"].items() if k != "top1"}, flush=True)
    save()
    if "inprocess" not in args.skip:
        report["in_process"] = in_process(config, version_dir, args.batches, images, 2.0)
        save()
    if "served" not in args.skip:
        report["served"] = []
        for instances in args.instances:
            report["served"] += serve_and_load(
                args.device,
                args.model,
                instances,
                args.max_batch,
                args.delay_ms,
                args.decode_threads,
                jpegs,
                expected,
                args.clients,
                args.seconds,
                args.loaders,
            )
            save()
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
