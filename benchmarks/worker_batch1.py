"""Why a worker's batch-1 call is slower than the in-process loop's: niceness, warmed shapes, idle gaps.

Each combination runs in a fresh spawned process, as pdserve's workers do: 1 math thread, nice 0
or 10, only batch 1 built or every padded size (1, 2, 4, 8, 16) built first, then 100 batch-1
calls, back to back or with ``--gap-ms`` of sleep between them (a worker at one client idles while
the HTTP process reads, decodes and answers). Prints each median.

    .venv/bin/python benchmarks/worker_batch1.py [--gaps-ms 0 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.queues import Queue
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "model_repo" / "efficientnet_lite0"


def child(nice: int, sizes: tuple[int, ...], gap_s: float, out: Queue[float], clone: bool = False) -> None:
    sys.path.insert(0, str(ROOT))
    os.nice(nice)
    from pdserve.model_config import load_model_config
    from pdserve.runtime.predictor_config import LoadedPredictor

    config = load_model_config(MODEL).model_copy(update={"cpu_threads": 1})
    predictor = LoadedPredictor(config, MODEL / "1", MODEL.name)
    batch = np.zeros((max(sizes), *config.input.shape), np.float32)
    for n in sizes:
        predictor.run(batch[:n])
        predictor.run(batch[:n])
    single = predictor.clone() if clone else predictor  # a twin sharing the weights, warmed at batch 1 only
    single.run(batch[:1])
    times = []
    for _ in range(100):
        start = time.perf_counter()
        single.run(batch[:1])
        times.append(1000 * (time.perf_counter() - start))
        if gap_s:
            time.sleep(gap_s)
    out.put(sorted(times)[50])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaps-ms", type=float, nargs="+", default=[0.0, 5.0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nice", type=int, nargs="+", default=[0, 10])
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    for round_ in range(1, args.rounds + 1):
        for gap in args.gaps_ms:
            for nice in args.nice:
                for sizes, clone in (((1,), False), ((1, 2, 4, 8), False), ((1, 2, 4, 8), True)):
                    queue: Queue[float] = ctx.Queue()
                    process = ctx.Process(target=child, args=(nice, sizes, gap / 1000, queue, clone))
                    process.start()
                    median = queue.get()
                    process.join()
                    how = "batch 1 on a clone" if clone else "batch 1 on the same"
                    print(f"round {round_}  gap {gap:3g} ms  nice {nice:2d}  built {','.join(map(str, sizes)):<8} "
                          f"{how}: median {median:6.2f} ms", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
