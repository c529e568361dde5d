"""A hung worker under load: how long its callers wait, and how long until it is replaced.

Serves the shipped repository, drives ``efficientnet_lite0`` with closed-loop clients, freezes one
of its workers with SIGSTOP (standing for a deadlocked predictor), and reports: the compute timeout
in force, when the callers of the frozen batch were answered and with what, when the instance was
serving again (a new pid), and that every other request kept succeeding meanwhile.

    .venv/bin/python benchmarks/hung_worker.py [--clients 8] [--seconds 30]

Target (issue 7): callers answered within the compute timeout, the worker replaced within the
compute timeout plus one restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.loadgen import Request, Target, closed_loop, run  # noqa: E402
from pdserve.pipeline.sample import MODEL_REPO, sample_list  # noqa: E402
from pdserve.pipeline.served import Served  # noqa: E402

MODEL = "efficientnet_lite0"


def instances(url: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = httpx.get(f"{url}/models/{MODEL}").json()["versions"][0]["instances"]
    return found


async def scenario(server: Served, args: argparse.Namespace) -> None:
    images = [p.read_bytes() for p, _ in sample_list(32)]
    target = Target("127.0.0.1", server.port)

    def pick(i: int) -> Request:
        return Request(images[i % len(images)], path=f"/predict?model={MODEL}&top_k=1")

    load = asyncio.ensure_future(closed_loop(target, pick, clients=args.clients, seconds=args.seconds))
    await asyncio.sleep(3)
    victim = instances(server.url)[0]
    pid = int(str(victim["pid"]))
    frozen_at = time.perf_counter()
    os.kill(pid, signal.SIGSTOP)
    replaced_at = None
    while time.perf_counter() - frozen_at < args.seconds:
        await asyncio.sleep(0.1)
        now = await asyncio.to_thread(instances, server.url)
        if now[0]["pid"] != pid and now[0]["state"] in ("READY", "BUSY"):
            replaced_at = time.perf_counter()
            break
    results, _ = await load
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # normally already killed by the supervisor
    hung = [r for r in results if r.status == 503 and b"worker_hung" in r.body]
    print(f"machine: {os.cpu_count()} cores; shipped model_repo; {args.clients} closed-loop clients on {MODEL}")
    print(f"froze worker pid {pid} (SIGSTOP) under load")
    for r in hung:
        print(
            f"  a caller of its batch: 503 worker_hung {r.started + r.latency_s - frozen_at:.2f} s after the freeze "
            f"(it had waited {r.latency_s:.2f} s)"
        )
    if replaced_at is not None:
        print(f"instance serving again (new pid {now[0]['pid']}) {replaced_at - frozen_at:.2f} s after the freeze")
    else:
        print("instance NOT replaced within the run")
    print(f"all answers: {dict(Counter(r.status for r in results))}")
    target.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with Served(MODEL_REPO) as server:
        timeout = httpx.get(f"{server.url}/models/{MODEL}").json()["versions"][0]["compute_timeout_ms"]
        print(f"compute timeout in force: {timeout:.0f} ms")
        run(scenario(server, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
