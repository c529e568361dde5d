"""Overload benchmark: closed-loop capacity first, then open-loop arrivals at a multiple of it.

Serves the shipped repository (``model_repo``, as ``make serve`` does), posts real JPEGs from the
ImageNet sample to ``efficientnet_lite0``, and reports, in one run: the closed-loop capacity; then,
for Poisson arrivals at ``--factor`` x capacity, whether every request was answered, the goodput
(200s per second) against capacity, and latency percentiles of the accepted requests and of the
rejections (429). Every 200 is checked to hold predictions. The load generator runs on the same
machine (``pdserve/pipeline/loadgen.py``, raw asyncio sockets, to take as little CPU as possible).

    .venv/bin/python benchmarks/overload.py [--factor 3] [--seconds 15] [--json out.json]

Targets (issue 7): every request answered; rejections p99 <= 50 ms; accepted p99 <= 1 s;
goodput >= 0.9 x capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.bench import cpu_name  # noqa: E402
from pdserve.pipeline.loadgen import Request, Result, Target, closed_loop, open_loop, percentile, run  # noqa: E402
from pdserve.pipeline.sample import MODEL_REPO, sample_list  # noqa: E402
from pdserve.pipeline.served import Served, metric  # noqa: E402

MODEL = "efficientnet_lite0"


def summarize(results: list[Result], span_s: float) -> dict[str, Any]:
    statuses = Counter(r.status for r in results)
    accepted = [r.latency_s * 1000 for r in results if r.status == 200]
    rejected = [r.latency_s * 1000 for r in results if r.status == 429]
    bad_200 = sum(1 for r in results if r.status == 200 and b'"predictions"' not in r.body)
    return {
        "sent": len(results),
        "answered": sum(1 for r in results if r.status != 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "goodput_per_s": statuses[200] / span_s,
        "accepted_p50_ms": percentile(accepted, 50),
        "accepted_p99_ms": percentile(accepted, 99),
        "rejected_p50_ms": percentile(rejected, 50),
        "rejected_p99_ms": percentile(rejected, 99),
        "rejected_max_ms": max(rejected, default=float("nan")),
        "malformed_200s": bad_200,
        "rejected_p99_ms_reused_connection": percentile(
            [r.latency_s * 1000 for r in results if r.status == 429 and not r.fresh], 99
        ),
        "rejected_p99_ms_new_connection": percentile(
            [r.latency_s * 1000 for r in results if r.status == 429 and r.fresh], 99
        ),
        "generator_lag_p99_ms": percentile([r.late_s * 1000 for r in results], 99),
        "span_s": span_s,
    }


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics").text


def server_side(before: str, after: str, status: str) -> dict[str, float]:
    """The share of requests the server itself answered within each bucket (its own histogram)."""
    name = "pdserve_request_duration_seconds"
    total = metric(after, f"{name}_count", model=MODEL, status=status) - metric(
        before, f"{name}_count", model=MODEL, status=status
    )
    shares = {}
    for le in ("0.01", "0.025", "0.05", "0.1", "0.25", "1.0"):
        within = metric(after, f"{name}_bucket", model=MODEL, status=status, le=le) - metric(
            before, f"{name}_bucket", model=MODEL, status=status, le=le
        )
        shares[f"<= {float(le) * 1000:g} ms"] = within / total if total else float("nan")
    return shares


async def measure(url_port: int, images: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    target = Target("127.0.0.1", url_port)
    path = f"/predict?model={MODEL}&top_k=1"

    def pick(i: int) -> Request:
        return Request(images[i % len(images)], path=path)

    await closed_loop(target, pick, clients=args.clients, seconds=3)  # warm up
    results, elapsed = await closed_loop(target, pick, clients=args.clients, seconds=args.seconds)
    capacity = summarize(results, elapsed)
    rate = capacity["goodput_per_s"] * args.factor
    target.close()
    target = Target("127.0.0.1", url_port)
    before = await asyncio.to_thread(scrape, url_port)
    generator_cpu = time.process_time()
    results, span = await open_loop(target, pick, rate=rate, seconds=args.seconds, seed=7)
    generator_cpu = time.process_time() - generator_cpu
    after = await asyncio.to_thread(scrape, url_port)
    overload = summarize(results, span)
    overload["generator_cores"] = generator_cpu / span
    overload["server_side"] = {status: server_side(before, after, status) for status in ("200", "429")}
    overload["arrival_rate_per_s"] = rate
    overload["connections_opened"] = target.opened
    overload["stale_connections_replaced"] = target.stale
    overload["errors"] = Counter(target.errors).most_common(5)
    target.close()
    return {"capacity": capacity, "overload": overload}


def report(out: dict[str, Any], args: argparse.Namespace) -> None:
    cap, over = out["capacity"], out["overload"]
    print(
        f"closed-loop capacity ({args.clients} clients, {args.seconds:g} s): {cap['goodput_per_s']:.1f} req/s, "
        f"p50 {cap['accepted_p50_ms']:.0f} ms, p99 {cap['accepted_p99_ms']:.0f} ms, statuses {cap['statuses']}"
    )
    print(f"open loop at {args.factor:g}x = {over['arrival_rate_per_s']:.1f} req/s for {args.seconds:g} s:")
    print(f"  sent {over['sent']}, answered {over['answered']}, statuses {over['statuses']}")
    print(f"  goodput {over['goodput_per_s']:.1f} req/s = {over['goodput_per_s'] / cap['goodput_per_s']:.2f}x capacity")
    print(f"  accepted p50 {over['accepted_p50_ms']:.0f} ms, p99 {over['accepted_p99_ms']:.0f} ms")
    print(
        f"  rejected (429) p50 {over['rejected_p50_ms']:.1f} ms, p99 {over['rejected_p99_ms']:.1f} ms, "
        f"max {over['rejected_max_ms']:.1f} ms"
    )
    print(
        f"  429 p99 on reused connections {over['rejected_p99_ms_reused_connection']:.1f} ms, on new ones "
        f"{over['rejected_p99_ms_new_connection']:.1f} ms; the generator's own lag p99 "
        f"{over['generator_lag_p99_ms']:.1f} ms"
    )
    for status, shares in over["server_side"].items():
        print(f"  server-side, status {status}: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    print(f"  the load generator's own CPU: {over['generator_cores']:.2f} cores")
    print(
        f"  200s without predictions: {over['malformed_200s']}; connections opened: {over['connections_opened']}"
        f" (stale keep-alive replaced: {over['stale_connections_replaced']}); errors: {over['errors']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=3.0, help="open-loop rate as a multiple of capacity")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients for capacity")
    parser.add_argument(
        "--worker-nice", type=int, nargs="+", default=[10], help="PDSERVE_WORKER_NICE values to run, in turn"
    )
    parser.add_argument(
        "--log-level", default="info", help="PDSERVE_LOG_LEVEL (info, as shipped: an access line per request)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    images = [p.read_bytes() for p, _ in sample_list(64)]
    cpu = cpu_name()
    print(
        f"machine: {cpu}, {os.cpu_count()} cores; shipped model_repo; model {MODEL}; log level {args.log_level}; "
        "load generator on the same cores"
    )
    runs = {}
    for nice in args.worker_nice:
        env = {"PDSERVE_WORKER_NICE": str(nice), "PDSERVE_LOG_LEVEL": args.log_level}
        with Served(MODEL_REPO, env=env) as server:
            out = run(measure(server.port, images, args))
            out["server_rss_mib"] = server.rss_mib()
        print(f"\n== PDSERVE_WORKER_NICE={nice}")
        report(out, args)
        runs[str(nice)] = out
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
