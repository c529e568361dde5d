"""Soak: many requests, a fifth of them bad, and the server's memory before and after.

Serves the shipped repository (``model_repo``, as ``make serve`` does) and sends ``--requests``
requests from closed-loop clients: real JPEGs (raw, multipart, base64 JSON) and, in
``--bad-share`` of them, hostile or broken input of every kind the server must refuse. Every answer
is checked against what it should be. RSS of the server's whole process tree (HTTP process and
workers) is read after a warm-up and at the end.

    .venv/bin/python benchmarks/soak.py [--requests 20000] [--bad-share 0.2] [--json out.json]

Target (issue 7): RSS growth after warm-up < 5%; every request answered as expected.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.hostile import bomb  # noqa: E402
from pdserve.pipeline.loadgen import Request, Result, Target, closed_loop, run  # noqa: E402
from pdserve.pipeline.sample import MODEL_REPO, sample_list  # noqa: E402
from pdserve.pipeline.served import Served  # noqa: E402

PATH = "/predict?model=efficientnet_lite0&top_k=3"
BOUNDARY = "soakboundary7a1c"


def multipart(parts: list[bytes]) -> bytes:
    chunks = []
    for i, data in enumerate(parts):
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{i}.jpg"\r\n'
        chunks.append(head.encode() + b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n")
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


def requests_for(images: list[bytes]) -> tuple[list[Request], list[Request], dict[str, tuple[int, str]]]:
    """Good requests, bad requests, and the status and error code each bad kind must get."""
    mp = f"multipart/form-data; boundary={BOUNDARY}"
    good = [Request(img, path=PATH, kind="raw") for img in images]
    good += [Request(multipart([img]), mp, PATH, kind="multipart") for img in images[:16]]
    good += [
        Request(json.dumps({"image": base64.b64encode(img).decode()}).encode(), "application/json", PATH, kind="b64")
        for img in images[:16]
    ]
    photo = images[0]
    bad = [
        Request(b"not an image at all", path=PATH, kind="garbage"),
        Request(photo[: len(photo) // 3], path=PATH, kind="truncated"),
        Request(b"", path=PATH, kind="empty"),
        Request(bomb("PNG"), "image/png", PATH, kind="bomb-png"),
        Request(bomb("JPEG"), "image/jpeg", PATH, kind="bomb-jpeg"),
        Request(b"[" * 5000 + b"]" * 5000, "application/json", PATH, kind="nested-json"),
        Request(b'{"image": "!!not base64!!"}', "application/json", PATH, kind="bad-base64"),
        Request(multipart([b"x"] * 65), mp, PATH, kind="too-many-images"),
        Request(b"hello", "text/plain", PATH, kind="wrong-type"),
        Request(b"GIF89a" + b"\0" * 64, path=PATH, kind="gif"),
    ]
    expected = {
        "garbage": (400, "invalid_image"),
        "truncated": (400, "invalid_image"),
        "empty": (400, "invalid_image"),
        "bomb-png": (413, "image_too_large"),
        "bomb-jpeg": (413, "image_too_large"),
        "nested-json": (400, "bad_request"),
        "bad-base64": (400, "bad_request"),
        "too-many-images": (413, "too_many_images"),
        "wrong-type": (415, "unsupported_media_type"),
        "gif": (400, "invalid_image"),
    }
    return good, bad, expected


def check(result: Result, expected: dict[str, tuple[int, str]]) -> str | None:
    """Why the answer is wrong, or None."""
    if result.status == 0:
        return "no answer"
    body = json.loads(result.body) if result.body else {}
    if result.kind in expected:
        status, code = expected[result.kind]
        got = body.get("error", {}).get("code")
        return None if (result.status, got) == (status, code) else f"{result.status} {got}"
    if result.status == 200:
        return None if body.get("predictions") else "200 without predictions"
    return None if result.status == 429 else f"{result.status} {body}"


async def soak(port: int, server: Served, args: argparse.Namespace) -> dict[str, Any]:
    images = [p.read_bytes() for p, _ in sample_list(64)]
    good, bad, expected = requests_for(images)
    rng = random.Random(11)
    plan = [rng.choice(bad) if rng.random() < args.bad_share else rng.choice(good) for _ in range(args.requests)]
    target = Target("127.0.0.1", port)
    warm = int(len(plan) * args.warmup_share)
    started = time.perf_counter()
    results, _ = await closed_loop(target, lambda i: plan[i], clients=args.clients, seconds=None, total=warm)
    rss_warm = server.rss_mib()
    samples = [rss_warm]
    rest = plan[warm:]
    step = max(1, len(rest) // 5)
    for start in range(0, len(rest), step):
        chunk = rest[start : start + step]
        more, _ = await closed_loop(target, chunk.__getitem__, clients=args.clients, seconds=None, total=len(chunk))
        results += more
        samples.append(server.rss_mib())
    target.close()
    wrong = Counter(f"{r.kind}: {why}" for r in results if (why := check(r, expected)) is not None)
    return {
        "requests": len(results),
        "bad": sum(1 for r in results if r.kind in expected),
        "statuses": {str(k): v for k, v in sorted(Counter(r.status for r in results).items())},
        "wrong_answers": dict(wrong.most_common(10)),
        "rss_after_warmup_mib": rss_warm,
        "rss_samples_mib": samples,
        "rss_end_mib": samples[-1],
        "rss_growth": samples[-1] / rss_warm - 1,
        "seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--bad-share", type=float, default=0.2)
    parser.add_argument("--warmup-share", type=float, default=0.1, help="share of requests before the first RSS")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with Served(MODEL_REPO) as server:
        out = run(soak(server.port, server, args))
    print(f"machine: {os.cpu_count()} cores; shipped model_repo; {args.clients} closed-loop clients")
    print(f"{out['requests']} requests ({out['bad']} bad) in {out['seconds']:.0f} s; statuses {out['statuses']}")
    print(f"wrong answers: {out['wrong_answers'] or 'none'}")
    samples = " -> ".join(f"{s:.0f}" for s in out["rss_samples_mib"])
    print(f"server process tree RSS (MiB) from warm-up to end: {samples}")
    print(f"RSS growth after warm-up: {out['rss_growth']:+.2%}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if not out["wrong_answers"] else 1


if __name__ == "__main__":
    sys.exit(main())
