"""Closed-loop requests/s and latency at several client counts, arms taking turns in one run.

Arms as in ``single_client.py`` (``NAME[@TREE][,KEY=VALUE...]``; default: the shipped settings and
``PDSERVE_WORKER_IDLE_SPIN_MS=0``), every server up at once and loaded in turn: for each round, each
client count, each arm, 2 s of warm-up and 8 s measured. ``make serve``'s repository, sample JPEGs.

    .venv/bin/python benchmarks/clients_arms.py [--clients 2 4 16] [--rounds 2] [--arm ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from single_client import DEFAULT_ARMS, Arm  # noqa: E402

from pdserve.pipeline.bench import cpu_name  # noqa: E402
from pdserve.pipeline.loadgen import Request, Result, Target, closed_loop, percentile, run  # noqa: E402
from pdserve.pipeline.sample import MODEL_REPO, sample_list  # noqa: E402
from pdserve.pipeline.served import Served  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4, 16])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--arm", action="append", help="NAME[@TREE][,KEY=VALUE...]; repeatable")
    args = parser.parse_args()
    arms = [Arm.parse(a) for a in (args.arm or DEFAULT_ARMS)]
    requests = [Request(p.read_bytes(), path=f"/predict?model={args.model}&top_k=5") for p, _ in sample_list(64)]
    print(f"{cpu_name()}, {os.cpu_count()} cores; load generator on the same cores; {args.model}")
    try:
        for arm in arms:
            arm.server = Served(MODEL_REPO, env={"PDSERVE_LOG_LEVEL": "info", **arm.env}, root=arm.tree)
        for arm in arms:
            assert arm.server is not None
            arm.server.wait_ready()
        for round_ in range(1, args.rounds + 1):
            for clients in args.clients:
                for arm in arms:
                    assert arm.server is not None
                    port = arm.server.port

                    async def load(clients: int = clients, port: int = port) -> tuple[list[Result], float]:
                        target = Target("127.0.0.1", port)
                        await closed_loop(target, lambda i: requests[i % len(requests)], clients, seconds=2)
                        results = await closed_loop(target, lambda i: requests[i % len(requests)], clients, seconds=8)
                        target.close()
                        return results

                    results, elapsed = run(load())
                    ok = [1000 * r.latency_s for r in results if r.status == 200]
                    print(
                        f"round {round_}  {arm.name:>14}  {clients:2d} clients: {len(ok) / elapsed:6.1f} req/s, "
                        f"p50 {percentile(ok, 50):6.1f} ms, p99 {percentile(ok, 99):6.1f} ms, "
                        f"not 200: {len(results) - len(ok)}",
                        flush=True,
                    )
    finally:
        for arm in arms:
            if arm.server is not None:
                arm.server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
