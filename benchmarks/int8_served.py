"""Served throughput of the INT8 model against its FP32 original, in one run of one server.

Starts ``pdserve serve`` on the shipped model repository (both models, their shipped configs),
then drives each model in turn with closed-loop clients posting real JPEGs from the sample for a
fixed time, alternating FP32 and INT8 for several rounds so that drift on a shared machine hits
both. Every response must be 200. Prints requests/s, p50/p99 and the INT8/FP32 ratio per round.

    .venv/bin/python benchmarks/int8_served.py [--seconds 20] [--clients 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.loadgen import Request, Target, closed_loop, percentile, run  # noqa: E402
from pdserve.pipeline.sample import sample_list  # noqa: E402
from pdserve.pipeline.served import Served  # noqa: E402

FP32, INT8 = "efficientnet_lite0", "efficientnet_lite0_int8"


def drive(port: int, model: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    target = Target("127.0.0.1", port)
    requests = [Request(b, path=f"/models/{model}/predict") for b in bodies]
    results, elapsed = run(closed_loop(target, lambda i: requests[i % len(requests)], clients, seconds))
    target.close()
    bad = [r for r in results if r.status != 200]
    if bad:
        raise SystemExit(f"{model}: {len(bad)} of {len(results)} responses were not 200 (first: {bad[0].status})")
    latencies = [r.latency_s * 1000 for r in results]
    return {"rps": len(results) / elapsed, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    bodies = [path.read_bytes() for path, _ in sample_list(64)]
    ratios = []
    with Served(ROOT / "model_repo") as server:
        for model in (FP32, INT8):  # warm both (first-touch allocations, connection setup)
            drive(server.port, model, bodies, args.clients, 3)
        print(f"{'round':>5} {'model':<26} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}")
        for round_ in range(1, args.rounds + 1):
            rows = {m: drive(server.port, m, bodies, args.clients, args.seconds) for m in (FP32, INT8)}
            for model, row in rows.items():
                print(f"{round_:>5} {model:<26} {row['rps']:>7.1f} {row['p50']:>7.0f} {row['p99']:>7.0f}")
            ratios.append(rows[INT8]["rps"] / rows[FP32]["rps"])
            print(f"{round_:>5} INT8/FP32 requests/s: {ratios[-1]:.2f}x")
    print(
        f"median INT8/FP32 over {args.rounds} rounds: {statistics.median(ratios):.2f}x "
        f"({args.clients} clients, {args.seconds:g} s per model per round)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
