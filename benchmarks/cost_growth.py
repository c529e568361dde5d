"""How pdserve's cost grows: throughput, latency and memory against instances and model size.

Two models: the shipped EfficientNet-Lite0 (FP32, 4.7 M parameters) and ResNet-50 (25.6 M, random
weights, exported here with ``pdserve export --arch resnet50``), each served by ``pdserve serve``
alone in a repository, with 1 instance of 2 math threads and with 2 instances of 1 thread (the
two ways to use 2 cores), batches of up to 16, queue delay 0. Each is loaded by ``clients``
closed-loop clients posting sample JPEGs. Prints RSS once loaded and at peak, requests/s,
p50/p99 and the server tree's CPU per image.

    .venv/bin/python benchmarks/cost_growth.py [--seconds 15] [--clients 16]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.loadgen import Request, Target, closed_loop, percentile, run  # noqa: E402
from pdserve.pipeline.sample import sample_list  # noqa: E402
from pdserve.pipeline.served import Served  # noqa: E402


def repository(model_dir: Path, instances: int, threads: int) -> Path:
    repo = Path(tempfile.mkdtemp(prefix="cost-growth-"))
    folder = repo / model_dir.name
    shutil.copytree(model_dir, folder, symlinks=True, ignore=shutil.ignore_patterns("search"))
    config = folder / "config.yaml"
    doc = yaml.safe_load(config.read_text())
    doc.update(instances=instances, cpu_threads=threads, max_batch_size=16, max_queue_delay_ms=0, max_queue_size=64)
    config.write_text(yaml.safe_dump(doc))
    return repo


def measure(model_dir: Path, instances: int, threads: int, jpegs: list[bytes], clients: int, seconds: float) -> str:
    repo = repository(model_dir, instances, threads)
    requests = [Request(j) for j in jpegs]
    try:
        with Served(repo) as served:
            loaded = served.rss_mib()
            target = Target("127.0.0.1", served.port)
            run(closed_loop(target, lambda i: requests[i % len(requests)], clients, 3))  # warm-up
            target.close()
            peak, stop = [loaded], threading.Event()

            def sample() -> None:
                while not stop.wait(0.5):
                    peak.append(served.rss_mib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            target = Target("127.0.0.1", served.port)
            cpu = served.cpu_seconds()
            results, elapsed = run(closed_loop(target, lambda i: requests[i % len(requests)], clients, seconds))
            cpu = served.cpu_seconds() - cpu
            target.close()
            stop.set()
            sampler.join()
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    ok = [r for r in results if r.status == 200]
    latencies = [1000 * r.latency_s for r in ok]
    return (
        f"| {model_dir.name} | {instances}x{threads} | {loaded:.0f} | {max(peak):.0f} | {len(ok) / elapsed:.1f} | "
        f"{percentile(latencies, 50):.0f} | {percentile(latencies, 99):.0f} | {1000 * cpu / max(len(ok), 1):.1f} | "
        f"{len(results) - len(ok)} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    jpegs = [p.read_bytes() for p, _ in sample_list(64)]
    work = Path(tempfile.mkdtemp(prefix="cost-growth-models-"))
    try:
        resnet = work / "resnet50"
        subprocess.run(
            [sys.executable, "-m", "pdserve", "export", "--arch", "resnet50", "--output", str(resnet)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        print(f"{args.clients} closed-loop clients, {args.seconds:g} s each, batches of up to 16")
        print("| model | instances x threads | RSS loaded MiB | RSS peak MiB | requests/s | p50 ms | p99 ms "
              "| CPU ms/img | not 200 |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for model_dir in (ROOT / "model_repo" / "efficientnet_lite0", resnet):
            for instances, threads in ((1, 2), (2, 1)):
                print(measure(model_dir, instances, threads, jpegs, args.clients, args.seconds), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
