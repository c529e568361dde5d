"""Why a served batch of one is slower than the in-process loop: a core that idles runs the next call slower.

Four arms take turns in blocks of 20 batch-1 calls of the shipped model at 1 math thread, with
``GAP_MS`` between calls (at one client a worker waits that long while the HTTP process answers and
reads the next request): two worker-like spawned processes at nice 10, one that blocks on its pipe
between calls as workers did and one that polls for up to 10 ms (``worker.next_message``, as they
do now), and this process, sleeping through the gap or spinning through it. Each prints the median
of the predictor's own time (``run`` alone, timed where it runs) and, for the processes, what the
pipe adds to it.

    .venv/bin/python benchmarks/idle_core.py [BLOCKS=15] [GAP_MS=4]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "model_repo" / "efficientnet_lite0"
SIZES = (1, 2, 4, 8)


def load() -> tuple[Any, np.ndarray]:
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from peers.common import Classifier

    classifier = Classifier(MODEL, 1)
    predictor = classifier.predictor
    shape = (max(SIZES), *classifier.config.input.shape)
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for n in SIZES:  # every padded size warmed, as a worker does
        predictor.run(batch[:n])
        predictor.run(batch[:n])
    return predictor, batch


def child(conn: Connection, spin_s: float) -> None:
    sys.path.insert(0, str(ROOT))
    from pdserve.runtime.worker import next_message

    os.nice(10)
    predictor, batch = load()
    conn.send("ready")
    while next_message(conn, spin_s) is not None:
        began = time.perf_counter()
        predictor.run(batch[:1])
        conn.send(time.perf_counter() - began)


def main() -> int:
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    gap = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.004
    ctx = mp.get_context("spawn")
    workers: dict[str, tuple[Connection, Any]] = {}
    for name, spin in (("worker, blocks between calls", 0.0), ("worker, polls up to 10 ms", 0.010)):
        near, far = ctx.Pipe()
        process = ctx.Process(target=child, args=(far, spin))
        process.start()
        near.recv()
        workers[name] = (near, process)
    predictor, batch = load()
    arms = [*workers, "in-process, sleeps through the gap", "in-process, spins through the gap"]
    runs: dict[str, list[float]] = {arm: [] for arm in arms}
    piped: dict[str, list[float]] = {arm: [] for arm in workers}
    for _ in range(blocks):
        for arm in arms:
            for _ in range(20):
                if arm in workers:
                    near = workers[arm][0]
                    began = time.perf_counter()
                    near.send(1)
                    own = near.recv()
                    piped[arm].append(time.perf_counter() - began - own)
                    runs[arm].append(own)
                else:
                    began = time.perf_counter()
                    predictor.run(batch[:1])
                    runs[arm].append(time.perf_counter() - began)
                if arm.endswith("spins through the gap"):
                    until = time.perf_counter() + gap
                    while time.perf_counter() < until:
                        pass
                else:
                    time.sleep(gap)
    from pdserve.pipeline.bench import cpu_name

    print(
        f"{cpu_name()}, {os.cpu_count()} cores; {MODEL.name}, 1 math thread; {blocks} blocks of 20 calls an arm, "
        f"{gap * 1000:g} ms gaps"
    )
    for arm, times in runs.items():
        pipe = f", the pipe adds {1000 * statistics.median(piped[arm]):.3f} ms" if arm in piped else ""
        print(f"{arm:36s} predictor p50 {1000 * statistics.median(times):6.2f} ms{pipe}")
    for near, process in workers.values():
        near.send(None)
        process.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
