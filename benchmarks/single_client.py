"""Single-client latency: one client posting sample JPEGs to the shipped repository, against the
in-process batch-1 call at the same math threads, interleaved in one run.

In-process: decode, crop, normalise and predict one image, back to back (``peers.common.Classifier``,
the code pdserve runs), no HTTP. Served: ``make serve``'s repository and settings (log level info),
one client on a keep-alive connection (``http.client``). This machine's speed drifts by tens of
percent within minutes, so the arms take turns in blocks of ``--block`` requests (each block starts
with a different arm) and each median comes from the same minutes. Every server runs at once, idle
but for its own blocks.

Arms: ``shipped`` (the settings as they are) and ``no idle spin`` (``PDSERVE_WORKER_IDLE_SPIN_MS=0``)
unless ``--arm`` names others: ``NAME[@TREE][,KEY=VALUE...]``, TREE a checkout of another commit to
serve from (its ``.venv`` is this one), KEY=VALUE pdserve's environment. The server's access lines
split its time (admission: reading, decoding and cropping up to the queue; compute: the worker's
batch with the pipe both ways), and its metrics give the worker's own time (normalise and predict).

    .venv/bin/python benchmarks/single_client.py [--blocks 15] [--arm before@../base,KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pdserve.pipeline.bench import cpu_name  # noqa: E402
from pdserve.pipeline.sample import MODEL_REPO, sample_list  # noqa: E402
from pdserve.pipeline.served import Served, metric  # noqa: E402

DEFAULT_ARMS = ["shipped", "no idle spin,PDSERVE_WORKER_IDLE_SPIN_MS=0"]
COMPUTE = "pdserve_inference_compute_seconds"


@dataclass
class Arm:
    name: str
    tree: Path
    env: dict[str, str]
    latencies: list[float] = field(default_factory=list)
    server: Served | None = None
    conn: http.client.HTTPConnection | None = None

    @classmethod
    def parse(cls, text: str) -> Arm:
        head, *pairs = text.split(",")
        name, _, tree = head.partition("@")
        return cls(name, Path(tree).resolve() if tree else ROOT, dict(p.split("=", 1) for p in pairs))


def access_medians(log: Path) -> dict[str, float]:
    fields: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if " access " not in f" {line} " or "status=200" not in line or "/predict" not in line:
            continue
        for key in ("admission_ms", "queue_ms", "compute_ms", "total_ms"):
            match = re.search(rf"\b{key}=([\d.]+)", line)
            if match:
                fields.setdefault(key, []).append(float(match.group(1)))
    return {k: statistics.median(v) for k, v in fields.items()}


def worker_time(conn: http.client.HTTPConnection, model: str) -> tuple[float, float]:
    """Sum and count of the workers' own batch times (normalise and predict) so far."""
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return metric(text, f"{COMPUTE}_sum", model=model), metric(text, f"{COMPUTE}_count", model=model)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15, help="turns each arm takes")
    parser.add_argument("--block", type=int, default=20, help="requests (or in-process calls) a turn")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--arm", action="append", help="NAME[@TREE][,KEY=VALUE...]; repeatable")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Paddle's import turns on INFO for every logger
    arms = [Arm.parse(a) for a in (args.arm or DEFAULT_ARMS)]
    threads = int(yaml.safe_load((MODEL_REPO / args.model / "config.yaml").read_text())["cpu_threads"])
    jpegs = [p.read_bytes() for p, _ in sample_list(64)]
    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores; {args.model}, {threads} math thread(s); {len(jpegs)} sample JPEGs")

    from peers.common import Classifier

    classifier = Classifier(MODEL_REPO / args.model, threads)
    for jpeg in jpegs[:8]:
        classifier.top5([classifier.decode(jpeg)])
    path = f"/predict?model={args.model}&top_k=5"
    inproc: list[float] = []
    decoded: list[float] = []  # the in-process decode and crop alone
    try:
        for arm in arms:
            arm.server = Served(MODEL_REPO, env={"PDSERVE_LOG_LEVEL": "info", **arm.env}, root=arm.tree)
        for arm in arms:
            assert arm.server is not None
            arm.server.wait_ready()
            arm.conn = http.client.HTTPConnection("127.0.0.1", arm.server.port)

        def post(conn: http.client.HTTPConnection, jpeg: bytes) -> None:
            conn.request("POST", path, body=jpeg, headers={"Content-Type": "image/jpeg"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status

        for arm in arms:
            assert arm.conn is not None
            for jpeg in jpegs[:16]:
                post(arm.conn, jpeg)
        before = {arm.name: worker_time(arm.conn, args.model) for arm in arms if arm.conn}
        turns: list[Arm | None] = [*arms, None]  # None: the in-process loop
        k = 0
        for block in range(args.blocks):
            shift = block % len(turns)
            for turn in turns[shift:] + turns[:shift]:
                for _ in range(args.block):
                    jpeg = jpegs[k % len(jpegs)]
                    k += 1
                    began = time.perf_counter()
                    if turn is None:
                        crop = classifier.decode(jpeg)
                        decoded.append(1000 * (time.perf_counter() - began))
                        classifier.top5([crop])
                        inproc.append(1000 * (time.perf_counter() - began))
                    else:
                        assert turn.conn is not None
                        post(turn.conn, jpeg)
                        turn.latencies.append(1000 * (time.perf_counter() - began))
        after = {arm.name: worker_time(arm.conn, args.model) for arm in arms if arm.conn}
    finally:
        for arm in arms:
            if arm.conn is not None:
                arm.conn.close()
            if arm.server is not None:
                arm.server.stop()
    base = statistics.median(inproc)
    print(
        f"in-process batch 1: p50 {base:.2f} ms ({len(inproc)} calls; "
        f"decode and crop p50 {statistics.median(decoded):.2f} ms)"
    )
    for arm in arms:
        assert arm.server is not None
        served = statistics.median(arm.latencies)
        (s0, n0), (s1, n1) = before[arm.name], after[arm.name]
        medians = access_medians(Path(arm.server.log.name))
        print(
            f"{arm.name:>14}: served p50 {served:.2f} ms (gap {served - base:+.2f} ms); worker's own time, mean "
            f"{1000 * (s1 - s0) / max(n1 - n0, 1):.2f} ms; access lines, medians: "
            + ", ".join(f"{k} {v:.2f}" for k, v in medians.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
