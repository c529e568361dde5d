"""Model lifecycle under load: a new version loaded while clients run, then unload/load cycles.

Serves a copy of the shipped ``efficientnet_lite0`` (its version folder linked, as shipped
otherwise) with an admin key. Phase 1: closed-loop clients post real JPEGs while a version 2 folder
appears and tritonclient calls ``load_model``; every response is checked. Phase 2: ``--cycles``
unload/load cycles through tritonclient; the RSS of the server's process tree, its worker count
and its shared-memory segments are read after the first cycle and after the last.

    .venv/bin/python benchmarks/reload.py [--clients 8] [--cycles 20]

Targets (issue 8): zero failed requests across the reload; no memory growth over the cycles.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tritonclient.http as triton  # noqa: E402

from pdserve.pipeline.loadgen import Request, Result, Target, run  # noqa: E402
from pdserve.pipeline.sample import DEFAULT_MODEL, MODEL_REPO, sample_list  # noqa: E402
from pdserve.pipeline.served import Served, make_repo  # noqa: E402

KEY = "bench-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def shm_segments() -> int:
    return sum(1 for p in Path("/dev/shm").iterdir() if p.name.startswith(("psm_", "wnsm_")))


async def drive(server: Served, repo: Path, args: argparse.Namespace) -> None:
    images = [p.read_bytes() for p, _ in sample_list(32)]
    target = Target("127.0.0.1", server.port)
    stop = asyncio.Event()
    results: list[Result] = []

    async def client_loop() -> None:
        i = 0
        while not stop.is_set():
            results.append(await target.send(Request(images[i % len(images)], path=f"/predict?model={DEFAULT_MODEL}")))
            i += 1

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=600)
    loops = [asyncio.ensure_future(client_loop()) for _ in range(args.clients)]
    await asyncio.sleep(3)
    (repo / DEFAULT_MODEL / "2").symlink_to(MODEL_REPO / DEFAULT_MODEL / "1", target_is_directory=True)
    started = time.perf_counter()
    await asyncio.to_thread(client.load_model, DEFAULT_MODEL, headers=AUTH)
    load_s = time.perf_counter() - started
    await asyncio.sleep(3)
    stop.set()
    await asyncio.gather(*loops)
    target.close()
    statuses = Counter(r.status for r in results)
    versions = Counter("v2" if b'"version":2' in r.body else "v1" for r in results if r.status == 200)
    print(f"machine: {os.cpu_count()} cores; {args.clients} closed-loop clients; instances as shipped")
    print(
        f"reload under load: load_model returned in {load_s:.1f} s; {len(results)} requests, statuses "
        f"{dict(statuses)}, answered by {dict(versions)}; failed: {len(results) - statuses[200]}"
    )

    pids_before = len(server.pids())
    rss = []
    for cycle in range(args.cycles):
        await asyncio.to_thread(client.unload_model, DEFAULT_MODEL, headers=AUTH)
        await asyncio.to_thread(client.load_model, DEFAULT_MODEL, headers=AUTH)
        ok = await asyncio.to_thread(client.is_model_ready, DEFAULT_MODEL)
        if not ok:
            print(f"cycle {cycle + 1}: model not ready after load")
        rss.append(server.rss_mib())
    client.close()
    print(
        f"{args.cycles} unload/load cycles: server tree RSS after cycle 1 {rss[0]:.0f} MiB, after cycle "
        f"{args.cycles} {rss[-1]:.0f} MiB ({rss[-1] / rss[0] - 1:+.2%}); processes {pids_before} -> "
        f"{len(server.pids())}; shared-memory segments now {shm_segments()}"
    )
    print("RSS per cycle (MiB): " + " ".join(f"{x:.0f}" for x in rss))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), {})  # the shipped config, version 1 linked
        with Served(repo, env={"PDSERVE_ADMIN_KEY": KEY}) as server:
            run(drive(server, repo, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
