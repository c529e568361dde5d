"""Serving benchmark: throughput and latency over HTTP for several model configs, in one run.

Starts ``pdserve serve`` once per variant (the shipped efficientnet_lite0 with config overrides),
drives it with closed-loop clients at several concurrencies posting real JPEGs, and prints
images/s, latency percentiles, the mean batch size (from /metrics) and the workers' RSS.
The clients run on the same machine and take CPU from the server: compare variants, not machines.

    .venv/bin/python benchmarks/serving.py [--requests 400] [--concurrency 1 8 32] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.bench import rss_mib  # noqa: E402
from pdserve.pipeline.sample import sample_list  # noqa: E402
from pdserve.pipeline.served import free_port, make_repo, metric  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "1 worker x 2 threads, batch<=8, delay 0 ms": {"max_queue_delay_ms": 0},
    "1 worker x 2 threads, batch<=8, delay 5 ms": {"max_queue_delay_ms": 5},
    "1 worker x 2 threads, batch 1 (no batching)": {"max_batch_size": 1},
    "2 workers x 1 thread, batch<=8, delay 0 ms": {"instances": 2, "cpu_threads": 1, "max_queue_delay_ms": 0},
}
MODEL = "efficientnet_lite0"


async def drive(url: str, images: list[bytes], requests: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def client() -> None:
            for i in counter:
                start = time.perf_counter()
                r = await c.post("/predict", content=images[i % len(images)], headers={"Content-Type": "image/jpeg"})
                r.raise_for_status()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


def run_variant(overrides: dict[str, Any], images: list[bytes], args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), overrides)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "pdserve", "serve", "--port", str(port), "--model-repo", str(repo)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("server did not become ready")
                time.sleep(0.2)
            asyncio.run(drive(url, images, 16, 4))  # warm the HTTP path
            info = httpx.get(f"{url}/models/{MODEL}").json()
            pids = [i["pid"] for v in info["versions"] for i in v["instances"]]
            rows = []
            for concurrency in args.concurrency:
                before = httpx.get(f"{url}/metrics").text
                elapsed, lat = asyncio.run(drive(url, images, args.requests, concurrency))
                after = httpx.get(f"{url}/metrics").text
                batches = metric(after, "pdserve_batch_size_count", model=MODEL) - metric(
                    before, "pdserve_batch_size_count", model=MODEL
                )
                ms = np.array(lat) * 1000
                rows.append(
                    {
                        "concurrency": concurrency,
                        "images_per_s": args.requests / elapsed,
                        "p50_ms": float(np.percentile(ms, 50)),
                        "p90_ms": float(np.percentile(ms, 90)),
                        "p99_ms": float(np.percentile(ms, 99)),
                        "mean_batch": args.requests / batches if batches else float("nan"),
                        "worker_rss_mib": sum(rss_mib(p) for p in pids),
                    }
                )
            return rows
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    images = [p.read_bytes() for p, _ in sample_list(64)]
    results = {name: run_variant(overrides, images, args) for name, overrides in VARIANTS.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"machine: {os.cpu_count()} cores; {args.requests} requests per row; clients on the same machine")
    columns = ("conc", "img/s", "p50 ms", "p90 ms", "p99 ms", "batch", "RSS MiB")
    print(f"{'variant':<46} " + " ".join(f"{c:>7}" for c in columns))
    for name, rows in results.items():
        for r in rows:
            print(
                f"{name:<46} {r['concurrency']:>7} {r['images_per_s']:>7.1f} {r['p50_ms']:>7.1f} {r['p90_ms']:>7.1f}"
                f" {r['p99_ms']:>7.1f} {r['mean_batch']:>7.2f} {r['worker_rss_mib']:>7.0f}"
            )
    base = next(iter(results.values()))
    for name, rows in list(results.items())[1:]:
        ratios = ", ".join(
            f"c={a['concurrency']}: {a['images_per_s'] / b['images_per_s']:.2f}x"
            for a, b in zip(base, rows, strict=True)
        )
        print(f"throughput of the first variant over '{name}': {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
