"""kind ocr against the servers PaddleOCR users have, in one run (issue 21).

Three systems read the same images (pdserve.pipeline.text_images, rendered with known text) with the
same PP-OCRv4 files and the same settings (RapidOCR's, so that both pipelines do the same work):

- pdserve: ``ppocr_v4`` (kind ocr) over its three stage models, as ``make serve-ocr`` lays them out;
- reference in-process: rapidocr-paddle called one image at a time (the limit of one process);
- FastAPI + reference: the reference behind a FastAPI route that runs one request at a time, as
  PaddleX's basic serving does.

Closed loop at 1, 4 and 16 clients: images/s, characters/s, p50/p99, CPU per image (the server's
process tree), pdserve's recognition padding waste (``pdserve_padded_pixels``: width padding of the
lines' pixels), the zero rows added to the recogniser's runs (``pdserve_padding_images``), and the
stage workers' memory (RSS at the end, and its peak).

    .venv/bin/python benchmarks/ocr.py [--seconds 20] [--rec-widths 96 160 ...] [--rec-padding paddleocr]
        [--det-instances N]

It also reads every page of the e2e test (CASES and MORE_CASES) with pdserve, 16 at a time, and with the
reference, and reports how many of the reference's lines pdserve read the same, and both pipelines'
character accuracy against the text the pages were rendered with.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402

from pdserve.model_config import Ocr  # noqa: E402
from pdserve.pipeline.bench import cpu_name  # noqa: E402
from pdserve.pipeline.loadgen import Request, Target, closed_loop, percentile, run  # noqa: E402
from pdserve.pipeline.published import OCR_MODEL, OCR_STAGES, ocr_repository  # noqa: E402
from pdserve.pipeline.served import Served, cpu_seconds, free_port, metric, tree  # noqa: E402
from pdserve.pipeline.text_images import (  # noqa: E402
    AS_REFERENCE,
    CASES,
    MORE_CASES,
    char_accuracy,
    line_agreement,
    read_pages,
    reference_lines,
    render,
)

REFERENCE = ROOT / ".venv" / "ocr-reference"


def load(url: str, path: str, images: list[bytes], clients: int, seconds: float, pids: list[int]) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    requests = [Request(data, "image/png", path) for data in images]
    target = Target(host, int(port))
    cpu0 = cpu_seconds(pids)
    results, elapsed = run(closed_loop(target, lambda i: requests[i % len(requests)], clients, seconds))
    cpu = cpu_seconds(pids) - cpu0
    target.close()
    ok = [r for r in results if r.status == 200]
    chars = sum(len(line["text"]) for r in ok for line in json.loads(r.body)["lines"])
    latencies = [r.latency_s * 1000 for r in ok]
    return {
        "clients": clients,
        "images_per_s": len(ok) / elapsed,
        "chars_per_s": chars / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "cpu_ms_per_image": 1000 * cpu / max(len(ok), 1),
        "errors": len(results) - len(ok),
    }


def memory_mib(pid: int) -> dict[str, float]:
    """A process's resident memory now and at its peak, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024, "peak_rss_mib": int(fields["VmHWM"].split()[0]) / 1024}


def _reference() -> Any:
    sys.path.insert(0, str(REFERENCE))
    from rapidocr_paddle import RapidOCR

    return RapidOCR(Global={"print_verbose": False})


def _decoded(images: list[bytes]) -> list[Any]:
    import cv2
    import numpy as np

    return [cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR) for d in images]


def in_process(images: list[bytes], seconds: float) -> dict[str, float]:
    """The reference called one image at a time in this process: its own limit, no HTTP."""
    engine = _reference()
    decoded = _decoded(images)
    engine(decoded[0])  # warm-up
    latencies: list[float] = []
    chars, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        result, _ = engine(decoded[len(latencies) % len(decoded)])
        latencies.append((time.perf_counter() - t) * 1000)
        chars += sum(len(text) for _, text, _ in result or [])
    elapsed = time.perf_counter() - start
    return {
        "clients": 1,
        "images_per_s": len(latencies) / elapsed,
        "chars_per_s": chars / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rec-widths", type=int, nargs="+", help="ocr.rec_widths (default: the shipped ones)")
    parser.add_argument("--rec-padding", choices=["buckets", "paddleocr"], help="ocr.rec_padding (default: paddleocr)")
    parser.add_argument("--det-instances", type=int, help="detector workers (default: the OCR repository's)")
    args = parser.parse_args()
    settings = {
        **AS_REFERENCE,
        **({"rec_widths": args.rec_widths} if args.rec_widths else {}),
        **({"rec_padding": args.rec_padding} if args.rec_padding else {}),
    }
    images = [render(lines, size, angle) for lines, size, angle in CASES]
    pages = [*CASES, *MORE_CASES]  # line agreement: every page the e2e test reads
    page_images = [render(lines, size, angle) for lines, size, angle in pages]
    print(f"CPU: {cpu_name()} ({platform.machine()}), {len(images)} images", flush=True)
    table: dict[str, list[dict[str, float]]] = {}
    theirs = reference_lines(_reference(), page_images)

    table["reference in-process"] = [in_process(images, args.seconds)]
    print(table, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        repo = ocr_repository(Path(tmp), ocr=settings)
        det_config = repo / OCR_STAGES[0] / "config.yaml"
        det = yaml.safe_load(det_config.read_text())
        if args.det_instances:
            det["instances"] = args.det_instances
            det_config.write_text(yaml.safe_dump(det, sort_keys=False))
        det_workers = int(det["instances"])
        served = Served(repo)
        try:
            served.wait_ready()
            path = f"/predict?model={OCR_MODEL}"
            # Warm every stage's shapes on every worker: one client's requests take the idle workers in
            # turn, so each image sent once per detector worker (twice at least) reaches each of them.
            for data in images:
                for _ in range(max(2, det_workers)):
                    httpx.post(served.url + path, content=data, headers={"content-type": "image/png"}, timeout=60)
            before = httpx.get(served.url + "/metrics").text
            rows = [load(served.url, path, images, c, args.seconds, served.pids()) for c in args.clients]
            after = httpx.get(served.url + "/metrics").text
            padded = metric(after, "pdserve_padded_pixels_total", model=OCR_MODEL, what="padding") - metric(
                before, "pdserve_padded_pixels_total", model=OCR_MODEL, what="padding"
            )
            pixels = metric(after, "pdserve_padded_pixels_total", model=OCR_MODEL, what="all") - metric(
                before, "pdserve_padded_pixels_total", model=OCR_MODEL, what="all"
            )
            rec = OCR_STAGES[1]
            zero_rows = metric(after, "pdserve_padding_images_total", model=rec) - metric(
                before, "pdserve_padding_images_total", model=rec
            )
            for row in rows:
                row["padding_waste"] = padded / max(pixels, 1)  # over the whole load, all client counts
            table["pdserve"] = rows
            workers = {
                f"{stage} worker {worker['index']}": memory_mib(worker["pid"])
                for stage in OCR_STAGES
                for worker in httpx.get(f"{served.url}/models/{stage}").json()["versions"][0]["instances"]
            }
            print(f"workers: {workers}; zero rows added to {rec}'s runs: {zero_rows:.0f}", flush=True)
            answered = read_pages(served.url, OCR_MODEL, page_images, max(args.clients))  # after the memory: new sizes
            assert all(r.status_code == 200 for r in answered), [r.text for r in answered if r.status_code != 200]
            our_lines = [r.json()["lines"] for r in answered]
        finally:
            served.stop()
    print(table, flush=True)

    port = free_port()
    peer = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "peers" / "ocr_fastapi.py"), "--port", str(port),
         "--reference", str(REFERENCE)],
        cwd=ROOT / "benchmarks",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                httpx.post(url + "/ocr", content=images[0], timeout=60)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        table["FastAPI + reference, one at a time"] = [
            load(url, "/ocr", images, c, args.seconds, tree(peer.pid)) for c in args.clients
        ]
    finally:
        peer.terminate()
        peer.wait(30)

    print()
    print("| system | clients | images/s | chars/s | p50 ms | p99 ms | CPU ms/image | padding waste |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in table.items():
        for r in rows:
            cpu = f"{r['cpu_ms_per_image']:.0f}" if "cpu_ms_per_image" in r else "-"
            waste = f"{r['padding_waste']:.1%}" if "padding_waste" in r else "-"
            print(
                f"| {name} | {r['clients']:.0f} | {r['images_per_s']:.2f} | {r['chars_per_s']:.0f} | "
                f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {cpu} | {waste} |"
            )
    agreed = line_agreement(our_lines, theirs)
    truth = [lines for lines, _, _ in pages]
    accuracy = [
        sum(char_accuracy([line["text"] for line in found], want) for found, want in zip(side, truth, strict=True))
        / len(truth)
        for side in (our_lines, theirs)
    ]
    print(
        f"lines of {len(pages)} pages read as the reference reads them ({max(args.clients)} requests at a time): "
        f"{agreed.equal}/{agreed.total} ({agreed.equal / agreed.total:.1%}) equal, {agreed.equal_but_spaces} "
        f"({agreed.equal_but_spaces / agreed.total:.1%}) equal but for spaces; character accuracy against the "
        f"truth: pdserve {accuracy[0]:.4f}, reference {accuracy[1]:.4f}; rec_padding "
        f"{Ocr.model_validate(settings).rec_padding}"
    )
    for reference_text, our_text in agreed.differ:
        print(f"  differs: reference {reference_text!r}, pdserve {our_text!r}")
    ours = {r["clients"]: r for r in table["pdserve"]}
    peer_rows = {r["clients"]: r for r in table["FastAPI + reference, one at a time"]}
    top = max(args.clients)
    print()
    for name, memory in workers.items():
        print(f"{name}: RSS {memory['rss_mib']:.0f} MiB (peak {memory['peak_rss_mib']:.0f})")
    widths = list(Ocr.model_validate(settings).rec_widths)
    print(
        f"zero rows added to {OCR_STAGES[1]}'s runs: {zero_rows:.0f}; rec_widths {widths}; "
        f"detector workers {det_workers}"
    )
    print(
        f"at {top} clients: pdserve {ours[top]['images_per_s'] / peer_rows[top]['images_per_s']:.2f}x the images/s "
        f"of FastAPI + reference; p99 {ours[top]['p99_ms']:.0f} vs {peer_rows[top]['p99_ms']:.0f} ms"
    )
    if 1 in ours:
        ref = table["reference in-process"][0]
        print(
            f"at 1 client: pdserve p50 {ours[1]['p50_ms']:.0f} ms vs reference in-process {ref['p50_ms']:.0f} ms "
            f"({ours[1]['p50_ms'] / ref['p50_ms']:.2f}x)"
        )


if __name__ == "__main__":
    main()
