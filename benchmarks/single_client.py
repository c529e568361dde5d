"""Single-client latency: one client posting sample JPEGs to the shipped repository, against the
in-process batch-1 call at the same math threads, in one run.

In-process: decode, crop, normalise and predict one image in a loop (``peers.common.Classifier``,
the code pdserve runs), no HTTP, median of the loop. Served: ``make serve``'s repository and
settings (log level info), one client on a keep-alive connection (``pdserve/pipeline/loadgen.py``),
median latency; the server's access lines say where its time went (admission: reading and decoding
up to the queue; queue; compute: the worker's batch, pipe included).

    .venv/bin/python benchmarks/single_client.py [--seconds 20] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pdserve.pipeline.loadgen import Request, Target, closed_loop, percentile, run  # noqa: E402
from pdserve.pipeline.sample import MODEL_REPO, sample_list  # noqa: E402
from pdserve.pipeline.served import Served  # noqa: E402


def in_process_p50(model: str, threads: int, jpegs: list[bytes], seconds: float, gap_s: float = 0.0) -> float:
    """Median ms of one image, back to back, or with ``gap_s`` of idling between images (as a
    served worker idles while its one client reads the answer and sends the next request)."""
    from peers.common import Classifier

    classifier = Classifier(MODEL_REPO / model, threads)
    for jpeg in jpegs[:8]:
        classifier.top5([classifier.decode(jpeg)])
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        began = time.perf_counter()
        classifier.top5([classifier.decode(jpegs[len(times) % len(jpegs)])])
        times.append(1000 * (time.perf_counter() - began))
        if gap_s:
            time.sleep(gap_s)
    return percentile(times, 50)


def access_medians(log: Path) -> dict[str, float]:
    fields: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if " access " not in f" {line} " or "status=200" not in line:
            continue
        for key in ("admission_ms", "queue_ms", "compute_ms", "total_ms"):
            match = re.search(rf"\b{key}=([\d.]+)", line)
            if match:
                fields.setdefault(key, []).append(float(match.group(1)))
    return {k: statistics.median(v) for k, v in fields.items()}


def served_p50(model: str, jpegs: list[bytes], seconds: float, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    path = f"/predict?model={model}&top_k=5"
    requests = [Request(j, path=path) for j in jpegs]
    with Served(MODEL_REPO, env={"PDSERVE_LOG_LEVEL": "info", **env}) as server:

        async def load() -> list[float]:
            target = Target("127.0.0.1", server.port)
            await closed_loop(target, lambda i: requests[i % len(requests)], clients=1, seconds=3)  # warm up
            results, _ = await closed_loop(target, lambda i: requests[i % len(requests)], clients=1, seconds=seconds)
            target.close()
            assert all(r.status == 200 for r in results), {r.status for r in results}
            return [r.latency_s * 1000 for r in results]

        latencies = run(load())
        log = Path(server.log.name)
    medians = access_medians(log)
    return percentile(latencies, 50), medians


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for pdserve's environment")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Paddle's import turns on INFO for every logger
    env = dict(kv.split("=", 1) for kv in args.env)
    threads = int(yaml.safe_load((MODEL_REPO / args.model / "config.yaml").read_text())["cpu_threads"])
    jpegs = [p.read_bytes() for p, _ in sample_list(64)]
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    print(f"{cpu}, {os.cpu_count()} cores; {args.model}, {threads} math thread(s); {len(jpegs)} sample JPEGs")
    inproc = in_process_p50(args.model, threads, jpegs, args.seconds / 2)
    print(f"in-process batch 1: p50 {inproc:.2f} ms", flush=True)
    idle = in_process_p50(args.model, threads, jpegs, args.seconds / 2, gap_s=0.005)
    print(f"in-process batch 1, idle 5 ms between images: p50 {idle:.2f} ms", flush=True)
    served, medians = served_p50(args.model, jpegs, args.seconds, env)
    print(f"served, 1 client:   p50 {served:.2f} ms  (gap {served - inproc:+.2f} ms)")
    print("server's access lines, medians: " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
