"""``make bench``: pdserve against Triton (pytriton), LitServe, a plain FastAPI route and the in-process limit.

Each server is started on 127.0.0.1 in its own process tree with the same model files, the same
preprocessing code (``pdserve.preprocess``), the same predictor setup (``LoadedPredictor``), the same
batch limit and queue delay and the same math threads, then driven by ``pdserve/pipeline/loadgen.py``
(asyncio, keep-alive, uvloop) posting real JPEGs from the sample: closed loop at each concurrency,
then open loop at fixed rates. Every response is checked (status 200 and a top-1 class). Per run:
requests/s, p50/p90/p99, errors, CPU-seconds per image of the server's process tree (from /proc,
so the client's CPU does not count) and peak RSS. The in-process pipeline (decode + preprocess +
predict at the same batch size and threads, no HTTP) is the limit. Output: a table on stdout,
``bench-results/results.json`` and PNG plots of throughput and p99 against concurrency.

Peers run from their own environment (``.venv-bench``, made by ``make bench``): nvidia-pytriton
0.7.0 needs numpy < 2 and, here, ``LD_LIBRARY_PATH`` pointing at the running Python's ``lib/``.

    make bench                      # or: .venv/bin/python benchmarks/run.py [--servers ...] [--seconds 20]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.bench import rss_mib  # noqa: E402
from pdserve.pipeline.loadgen import Request, Target, closed_loop, open_loop, percentile, run  # noqa: E402
from pdserve.pipeline.sample import sample_list  # noqa: E402
from pdserve.pipeline.served import (  # noqa: E402
    cpu_seconds,
    free_port,
    tree,
)

BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
MODEL = "efficientnet_lite0"


@dataclass
class Server:
    name: str
    command: Callable[[int], list[str]]
    ready: str  # GET path that answers 200 when ready
    request: Callable[[bytes], Request]
    top1: Callable[[bytes], int]  # the top-1 class from a response body
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM


def _pdserve_top1(body: bytes) -> int:
    return int(json.loads(body)["predictions"][0]["class_id"])


def _triton_request(jpeg: bytes) -> Request:
    binary = struct.pack("<I", len(jpeg)) + jpeg
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(binary)}}
            ],
            "outputs": [{"name": "classes", "parameters": {"binary_data": False}}],
        }
    ).encode()
    return Request(
        header + binary,
        content_type="application/octet-stream",
        path=f"/v2/models/{MODEL}/infer",
        headers=(("Inference-Header-Content-Length", str(len(header))),),
    )


def _triton_top1(body: bytes) -> int:
    outputs = json.loads(body)["outputs"]
    return int(next(o for o in outputs if o["name"] == "classes")["data"][0])


def servers(batch: int, delay_ms: float, threads: int, repos: dict[str, Path]) -> dict[str, Server]:
    peer = [str(BENCH_PYTHON), "-u"]
    knobs = ["--threads", str(threads), "--max-batch-size", str(batch), "--max-delay-ms", str(delay_ms)]
    peer_env = {"PYTHONPATH": str(ROOT / "benchmarks")}
    libdir = subprocess.run(
        [str(BENCH_PYTHON), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip() or sysconfig.get_config_var("LIBDIR")
    return {
        "pdserve": Server(
            "pdserve",
            lambda port: [
                sys.executable,
                "-m",
                "pdserve",
                "serve",
                "--port",
                str(port),
                "--model-repo",
                str(repos[MODEL]),
            ],
            "/readyz",
            lambda jpeg: Request(jpeg, path=f"/models/{MODEL}/predict"),
            _pdserve_top1,
            {"PDSERVE_LOG_LEVEL": "warning"},
        ),
        "pdserve-int8": Server(
            "pdserve-int8",
            lambda port: [
                *(sys.executable, "-m", "pdserve", "serve", "--port", str(port)),
                *("--model-repo", str(repos[f"{MODEL}_int8"])),
            ],
            "/readyz",
            lambda jpeg: Request(jpeg, path=f"/models/{MODEL}_int8/predict"),
            _pdserve_top1,
            {"PDSERVE_LOG_LEVEL": "warning"},
        ),
        "triton": Server(
            "triton",
            lambda port: [
                *peer,
                str(ROOT / "benchmarks" / "peers" / "pytriton_server.py"),
                "--port",
                str(port),
                *knobs,
            ],
            f"/v2/models/{MODEL}/ready",
            _triton_request,
            _triton_top1,
            {**peer_env, "LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"},
            signal.SIGINT,  # pytriton stops cleanly only on SIGINT
        ),
        "litserve": Server(
            "litserve",
            lambda port: [
                *peer,
                str(ROOT / "benchmarks" / "peers" / "litserve_server.py"),
                "--port",
                str(port),
                *knobs,
            ],
            "/health",
            lambda jpeg: Request(
                json.dumps({"image": base64.b64encode(jpeg).decode()}).encode(), content_type="application/json"
            ),
            _pdserve_top1,
            peer_env,
        ),
        "fastapi": Server(
            "fastapi",
            lambda port: [*peer, str(ROOT / "benchmarks" / "peers" / "fastapi_plain.py"), "--port", str(port), *knobs],
            "/docs",
            lambda jpeg: Request(jpeg),
            _pdserve_top1,
            peer_env,
        ),
    }


@dataclass
class Row:
    server: str
    mode: str  # closed or open
    load: float  # clients (closed) or requests/s offered (open)
    requests: int
    errors: int  # neither 200 nor 429
    shed: int  # 429: refused by admission control (pdserve's max_queue_size), by design
    wrong: int  # 200 but not the expected top-1
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_ms_per_image: float
    peak_rss_mib: float
    mean_batch: float | None = None  # pdserve: images per dispatched batch (from /metrics)
    padding_pct: float | None = None  # pdserve: padded rows as a share of rows computed


class Running:
    """A server process tree: started, awaited, measured, stopped."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.port = free_port() if server.name != "triton" else _free_triple()
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{server.name}-", suffix=".log", delete=False)  # noqa: SIM115
        env = {**os.environ, **server.env}
        self.proc = subprocess.Popen(
            server.command(self.port),
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server.name} exited; see {self.log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}{self.server.ready}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.server.name} not ready in {timeout} s; see {self.log.name}")

    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, self.server.stop_signal)
            self.proc.wait(60)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _free_triple() -> int:
    """A port p with p+1 and p+2 free too (Triton's HTTP, gRPC and metrics ports)."""
    import socket

    for _ in range(100):
        port = free_port()
        ok = True
        for extra in (1, 2):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + extra))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no three consecutive free ports")


class RssSampler:
    def __init__(self, running: Running) -> None:
        self.running, self.peak, self._stop = running, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss_mib(p) for p in self.running.pids()))
            self._stop.wait(0.5)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    running: Running, requests: list[Request], expected: list[int], mode: str, load: float, seconds: float
) -> Row:
    target = Target("127.0.0.1", running.port)

    def pick(i: int) -> Request:
        return requests[i % len(requests)]

    batches_before = batch_counters(running)
    cpu_before = cpu_seconds(running.pids())
    with RssSampler(running) as rss:
        if mode == "closed":
            results, elapsed = run(closed_loop(target, pick, int(load), seconds))
        else:
            results, elapsed = run(open_loop(target, pick, load, seconds))
    cpu = cpu_seconds(running.pids()) - cpu_before
    target.close()
    batches_after = batch_counters(running)
    mean_batch = padding_pct = None
    if batches_before and batches_after:
        count, images, padding = (a - b for a, b in zip(batches_after, batches_before, strict=True))
        if count:
            mean_batch, padding_pct = images / count, 100 * padding / max(images + padding, 1)
    ok = [r for r in results if r.status == 200]
    wrong = 0
    for r in ok:  # each request's kind is the index of its image
        try:
            if running.server.top1(r.body) != expected[int(r.kind)]:
                wrong += 1
        except (ValueError, KeyError, IndexError, StopIteration):
            wrong += 1
    latencies = [r.latency_s * 1000 for r in ok]
    return Row(
        running.server.name,
        mode,
        load,
        len(results),
        sum(r.status not in (200, 429) for r in results),
        sum(r.status == 429 for r in results),
        wrong,
        len(ok) / elapsed,
        percentile(latencies, 50),
        percentile(latencies, 90),
        percentile(latencies, 99),
        1000 * cpu / max(len(ok), 1),
        rss.peak,
        mean_batch,
        padding_pct,
    )


def batch_counters(running: Running) -> tuple[float, float, float] | None:
    """pdserve's batches, images in them and padding rows so far, summed over models; None for peers."""
    if not running.server.name.startswith("pdserve"):
        return None
    text = httpx.get(f"http://127.0.0.1:{running.port}/metrics", timeout=10).text
    sums = {"pdserve_batch_size_count": 0.0, "pdserve_batch_size_sum": 0.0, "pdserve_padding_images_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums["pdserve_batch_size_count"], sums["pdserve_batch_size_sum"], sums["pdserve_padding_images_total"]


def in_process(batch: int, threads: int, jpegs: list[bytes], seconds: float) -> dict[str, float]:
    """Decode + preprocess + predict at ``batch`` with ``threads`` math threads, no HTTP: the limit."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peers.common import Classifier

    classifier = Classifier(ROOT / "model_repo" / MODEL, threads)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start, images, i = time.perf_counter(), 0, 0
    while time.perf_counter() - start < seconds:
        chunk = [jpegs[(i + k) % len(jpegs)] for k in range(batch)]
        classifier.top5([classifier.decode(j) for j in chunk])
        images += batch
        i += batch
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return {"images_per_s": images / elapsed, "cpu_ms_per_image": 1000 * cpu / images}


def in_process_layout(instances: int, batch: int, threads: int, jpegs: list[bytes], seconds: float) -> dict[str, float]:
    """``instances`` processes each running ``in_process`` at once: the limit of pdserve's own layout."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(instances) as pool:
        parts = pool.starmap(in_process, [(batch, threads, jpegs, seconds)] * instances)
    rate = sum(p["images_per_s"] for p in parts)
    cpu = sum(p["cpu_ms_per_image"] * p["images_per_s"] for p in parts) / rate
    return {"images_per_s": rate, "cpu_ms_per_image": cpu}


def in_process_latency(threads: int, jpegs: list[bytes], seconds: float) -> float:
    """Median milliseconds to classify one JPEG (decode + preprocess + predict at batch 1), no HTTP."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peers.common import Classifier

    classifier = Classifier(ROOT / "model_repo" / MODEL, threads)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        classifier.top5([classifier.decode(jpegs[len(times) % len(jpegs)])])
        times.append(1000 * (time.perf_counter() - began))
    return percentile(times, 50)


def plot(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(r.server for r in rows):
        closed = [r for r in rows if r.server == name and r.mode == "closed"]
        left.plot([r.load for r in closed], [r.rps for r in closed], marker="o", label=name)
        right.plot([r.load for r in closed], [r.p99_ms for r in closed], marker="o", label=name)
    for ax, label in ((left, "requests/s"), (right, "p99 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel(label)
        ax.legend()
    left.set_title("Throughput against concurrency")
    right.set_title("p99 against concurrency")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", default=["pdserve", "triton", "litserve", "fastapi", "pdserve-int8"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--rates", type=float, nargs="*", default=[30.0, 60.0], help="open-loop requests/s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=64, help="distinct sample JPEGs to cycle through")
    parser.add_argument("--pdserve-layout", help="pdserve's instances x cpu_threads, e.g. 1x2 (default: shipped)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    samples = sample_list(args.images)
    jpegs = [p.read_bytes() for p, _ in samples]
    args.out.mkdir(parents=True, exist_ok=True)
    limit = in_process(args.batch, args.threads, jpegs, args.seconds)
    print(f"in-process pipeline (batch {args.batch}, {args.threads} threads): {limit['images_per_s']:.1f} images/s, "
          f"{limit['cpu_ms_per_image']:.1f} CPU ms/image", flush=True)  # fmt: skip
    instances, worker_threads = _pdserve_layout(args)
    if (instances, worker_threads) != (1, args.threads):
        layout = in_process_layout(instances, args.batch, worker_threads, jpegs, args.seconds)
        limit["layout_images_per_s"], limit["layout_cpu_ms_per_image"] = layout.values()
        limit["layout_instances"], limit["layout_threads"] = instances, worker_threads
        print(f"in-process pipeline, pdserve's layout ({instances} processes x {worker_threads} threads, batch "
              f"{args.batch}): {layout['images_per_s']:.1f} images/s, {layout['cpu_ms_per_image']:.1f} CPU ms/image",
              flush=True)  # fmt: skip
    for threads in sorted({args.threads, worker_threads}):
        limit[f"batch1_p50_ms_{threads}_threads"] = latency = in_process_latency(threads, jpegs, args.seconds / 2)
        print(f"in-process pipeline, batch 1, {threads} threads: p50 {latency:.1f} ms", flush=True)
    expected = _expected(jpegs, args.threads)
    repos = {folder: _repo(args, folder) for folder in (MODEL, f"{MODEL}_int8")}
    rows: list[Row] = []
    for name in args.servers:
        server = servers(args.batch, args.delay_ms, args.threads, repos)[name]
        if name != "pdserve" and not name.startswith("pdserve") and not BENCH_PYTHON.exists():
            print(f"{name}: skipped, {BENCH_PYTHON} missing (make bench creates it)", file=sys.stderr)
            continue
        running = Running(server)
        try:
            running.wait_ready()
            requests = [replace(server.request(j), kind=str(i)) for i, j in enumerate(jpegs)]
            want = expected["int8" if name == "pdserve-int8" else "fp32"]
            measure(running, requests, want, "closed", 4, 3)  # warm-up
            for clients in args.concurrency:
                rows.append(measure(running, requests, want, "closed", clients, args.seconds))
                print(_line(rows[-1]), flush=True)
            for rate in args.rates:
                rows.append(measure(running, requests, want, "open", rate, args.seconds))
                print(_line(rows[-1]), flush=True)
        finally:
            running.stop()
    (args.out / "results.json").write_text(
        json.dumps({"in_process": limit, "rows": [asdict(r) for r in rows], "args": vars(args)}, indent=2, default=str)
    )
    plot(rows, args.out / "throughput_p99.png")
    print()
    print(table(rows, limit))
    return 0


def _expected(jpegs: list[bytes], threads: int) -> dict[str, list[int]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peers.common import Classifier

    out = {}
    for key, folder in (("fp32", MODEL), ("int8", f"{MODEL}_int8")):
        classifier = Classifier(ROOT / "model_repo" / folder, threads)
        out[key] = [int(c[0]) for c in classifier.top5([classifier.decode(j) for j in jpegs])[0]]
    return out


def _pdserve_layout(args: argparse.Namespace) -> tuple[int, int]:
    """pdserve's instances and math threads per worker in this run."""
    if args.pdserve_layout:
        instances, threads = (int(v) for v in args.pdserve_layout.split("x"))
        return instances, threads
    import yaml

    doc = yaml.safe_load((ROOT / "model_repo" / MODEL / "config.yaml").read_text())
    return int(doc["instances"]), int(doc["cpu_threads"])


def _repo(args: argparse.Namespace, folder: str) -> Path:
    """A repository of one shipped model (instances and threads as shipped), with this run's batch limit and delay."""
    import shutil

    import yaml

    repo = Path(tempfile.mkdtemp(prefix="bench-repo-"))
    shutil.copytree(ROOT / "model_repo" / folder, repo / folder, symlinks=True)
    config = repo / folder / "config.yaml"
    doc = yaml.safe_load(config.read_text())
    doc.update(max_batch_size=args.batch, max_queue_delay_ms=args.delay_ms)
    if args.pdserve_layout:  # instances x cpu_threads, e.g. 1x2 (default: as shipped)
        instances, threads = (int(v) for v in args.pdserve_layout.split("x"))
        doc.update(instances=instances, cpu_threads=threads)
    config.write_text(yaml.safe_dump(doc))
    (repo / "repository.yaml").write_text(yaml.safe_dump({"default_model": folder}))
    return repo


def _line(r: Row) -> str:
    load = f"{int(r.load)} clients" if r.mode == "closed" else f"{r.load:g}/s offered"
    return (
        f"{r.server:<13} {load:>14} {r.rps:7.1f} req/s  p50 {r.p50_ms:6.0f}  p90 {r.p90_ms:6.0f}"
        f"  p99 {r.p99_ms:6.0f} ms"
        f"  errors {r.errors}  shed {r.shed}  wrong {r.wrong}"
        f"  {r.cpu_ms_per_image:5.1f} CPU ms/img  {r.peak_rss_mib:6.0f} MiB"
        + (f"  batch {r.mean_batch:4.1f} padding {r.padding_pct:4.1f}%" if r.mean_batch is not None else "")
    )


def table(rows: list[Row], limit: dict[str, float]) -> str:
    out = [
        "| server | load | requests/s | CPU ms per image | p50 ms | p90 ms | p99 ms | errors | 429 | peak RSS MiB "
        "| mean batch | padding |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| in-process pipeline | - | {limit['images_per_s']:.1f} | {limit['cpu_ms_per_image']:.1f} "
        "| - | - | - | - | - | - | - | - |",
    ]
    if "layout_instances" in limit:
        name = f"in-process, pdserve's layout ({limit['layout_instances']:.0f}x{limit['layout_threads']:.0f})"
        out.append(
            f"| {name} | - | {limit['layout_images_per_s']:.1f} | {limit['layout_cpu_ms_per_image']:.1f} "
            "| - | - | - | - | - | - | - | - |"
        )
    for key, value in limit.items():
        if key.startswith("batch1_p50_ms_"):
            threads = key.removeprefix("batch1_p50_ms_").split("_")[0]
            name = f"in-process, batch 1, {threads} threads"
            out.append(f"| {name} | 1 client | - | - | {value:.1f} | - | - | - | - | - | 1 | - |")
    for r in rows:
        load = f"{int(r.load)} clients" if r.mode == "closed" else f"{r.load:g}/s open"
        out.append(
            f"| {r.server} | {load} | {r.rps:.1f} | {r.cpu_ms_per_image:.1f} | {r.p50_ms:.0f} | {r.p90_ms:.0f} | "
            f"{r.p99_ms:.0f} | {r.errors + r.wrong} | {r.shed} | {r.peak_rss_mib:.0f} | "
            + (f"{r.mean_batch:.1f} | {r.padding_pct:.1f}% |" if r.mean_batch is not None else "- | - |")
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
