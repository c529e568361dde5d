"""What each new batch size costs a oneDNN predictor: RSS added by its first run, and time per image.

Why workers warm a few padded sizes rather than every size: each input shape oneDNN sees adds its
primitives and buffers for good. One predictor, 1 math thread (as pdserve's shipped workers), batch
sizes 1 to ``--max-batch`` in order, each run once to build it, then timed.

    .venv/bin/python benchmarks/shape_memory.py [--model efficientnet_lite0] [--max-batch 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.model_config import load_model_config, version_folders  # noqa: E402
from pdserve.pipeline.bench import rss_mib  # noqa: E402
from pdserve.runtime.predictor_config import LoadedPredictor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    model_dir = ROOT / "model_repo" / args.model
    config = load_model_config(model_dir).model_copy(update={"cpu_threads": args.threads})
    predictor = LoadedPredictor(config, model_dir / str(max(version_folders(model_dir))), args.model)
    loaded = rss_mib()
    print(f"{args.model}, {args.threads} thread(s): RSS after loading {loaded:.0f} MiB")
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, *config.input.shape)).astype(np.float32)

    def batch1_ms() -> float:
        times = []
        for _ in range(60):
            start = time.perf_counter()
            predictor.run(one)
            times.append(1000 * (time.perf_counter() - start))
        return sorted(times)[30]

    predictor.run(one)
    alone = batch1_ms()
    for n in range(1, args.max_batch + 1):
        batch = rng.standard_normal((n, *config.input.shape)).astype(np.float32)
        before = rss_mib()
        predictor.run(batch)
        added = rss_mib() - before
        reps = max(1, 32 // n)
        start = time.perf_counter()
        for _ in range(reps):
            predictor.run(batch)
        ms = 1000 * (time.perf_counter() - start) / reps
        print(f"batch {n:2d}: +{added:5.1f} MiB on first run (RSS {rss_mib():5.0f}), {ms / n:5.2f} ms per image")
    print(f"all {args.max_batch} sizes: +{rss_mib() - loaded:.0f} MiB")
    print(f"batch 1, median of 60: {alone:.2f} ms with only its own shape built, {batch1_ms():.2f} ms after all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
