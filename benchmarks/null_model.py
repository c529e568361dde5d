"""The cost of a request and of a refusal, with a model whose compute is nothing.

A null model (per image: the mean of each channel of a 3x8x8 input, a 3x10 matrix, a softmax; one
worker, one thread) makes requests/s and CPU per request measure the front end: HTTP, routing,
admission, body, decode of an 8x8 JPEG, batching, the pipe to the worker, the answer. pdserve serves
it as shipped otherwise (log level info: one access line per request) in four ways:

* ``rest_raw``: ``POST /predict?model=null`` with the JPEG as the body;
* ``rest_json``: the same with ``{"image": "<base64>"}``;
* ``v2_json``: ``POST /v2/models/null_tensor/infer``, the 3x8x8 tensor as JSON (kind tensor);
* ``v2_binary``: the same with Triton's binary tensor extension, in and out.

Beside it, in the same run, the same computation behind Triton (nvidia-pytriton: v2 JSON and
binary into Triton's dynamic batcher) and LitServe (the JPEG as base64 JSON). Then refusals:
pdserve with ``PDSERVE_MAX_INFLIGHT_REQUESTS=1`` and that one slot held by an upload that never
ends, so every request is a 429; CPU per 429 is the front end's CPU over the refusals.

"front-end CPU" is the process that speaks HTTP (pdserve's main process, ``tritonserver``);
"tree" adds the workers. Load: ``pdserve/pipeline/loadgen.py`` on the same cores.

    .venv/bin/python benchmarks/null_model.py [--seconds 10] [--clients 1 16] [--only pdserve]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.bench import cpu_name  # noqa: E402
from pdserve.pipeline.loadgen import Request, Result, Target, closed_loop, percentile, run  # noqa: E402
from pdserve.pipeline.served import Served, cpu_seconds, free_port, tree  # noqa: E402

BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
EXPORT = """
import sys, paddle
from paddle.static import InputSpec

class Null(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        paddle.seed(0)
        self.fc = paddle.nn.Linear(3, 10)

    def forward(self, x):
        return paddle.nn.functional.softmax(self.fc(x.mean(axis=[2, 3])))

net = Null()
net.eval()
paddle.jit.save(net, sys.argv[1] + "/model", input_spec=[InputSpec([None, 3, 8, 8], "float32", "x")])
"""
COMMON = {"instances": 1, "cpu_threads": 1, "max_batch_size": 8, "max_queue_delay_ms": 0, "max_queue_size": 256}


def build_repo(root: Path) -> Path:
    """``null`` (kind image, 8x8 input) and ``null_tensor`` (kind tensor), one exported Paddle program."""
    version = root / "null" / "1"
    version.mkdir(parents=True)
    script = root / "export_null.py"  # a file: paddle.jit.save reads forward()'s source
    script.write_text(EXPORT)
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}
    subprocess.run([sys.executable, str(script), str(version)], check=True, env=env, capture_output=True)
    script.unlink()
    (root / "null" / "labels.txt").write_text("".join(f"class{i}\n" for i in range(10)))
    image = {
        **COMMON,
        "input": {"name": "x", "shape": [3, 8, 8], "dtype": "float32"},
        "preprocessing": {"resize_shorter": 8, "crop": 8, "mean": [0.0] * 3, "std": [1.0] * 3},
        "output": {"softmax_applied": True},
        "labels": "labels.txt",
    }
    (root / "null" / "config.yaml").write_text(yaml.safe_dump(image))
    (root / "null_tensor").mkdir()
    (root / "null_tensor" / "1").symlink_to(version, target_is_directory=True)
    (root / "null_tensor" / "config.yaml").write_text(yaml.safe_dump({**COMMON, "kind": "tensor"}))
    return root


def jpeg() -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def tensor() -> np.ndarray:
    return np.random.default_rng(2).random((1, 3, 8, 8), dtype=np.float32)


def v2_json(model: str) -> Request:
    x = tensor()
    doc = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return Request(json.dumps(doc).encode(), "application/json", f"/v2/models/{model}/infer")


def v2_binary(model: str, output: str) -> Request:
    raw = tensor().tobytes()
    inputs = [{"name": "x", "shape": [1, 3, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}]
    header = json.dumps({"inputs": inputs, "outputs": [{"name": output, "parameters": {"binary_data": True}}]})
    return Request(
        header.encode() + raw,
        "application/octet-stream",
        f"/v2/models/{model}/infer",
        (("Inference-Header-Content-Length", str(len(header))),),
    )


def rest_json(path: str) -> Request:
    return Request(json.dumps({"image": base64.b64encode(jpeg()).decode()}).encode(), "application/json", path)


@dataclass
class Row:
    server: str
    request: str
    clients: int
    requests: int
    statuses: dict[str, int]
    rps: float
    front_us: float | None  # CPU microseconds per request of the process that speaks HTTP
    tree_us: float  # ... of the whole process tree
    p50_ms: float
    p99_ms: float

    def line(self) -> str:
        front = f"{self.front_us:.0f}" if self.front_us is not None else "-"
        per_core = f"{1e6 / self.front_us:.0f}" if self.front_us else "-"
        return (
            f"| {self.server} | {self.request} | {self.clients} | {self.rps:.0f} | {front} | {per_core} | "
            f"{self.tree_us:.0f} | {self.p50_ms:.2f} | {self.p99_ms:.2f} | {dict(sorted(self.statuses.items()))} |"
        )


HEADER = (
    "| server | request | clients | requests/s | front-end CPU us/request | front-end requests/s per core | "
    "tree CPU us/request | p50 ms | p99 ms | statuses |\n|---|---|---|---|---|---|---|---|---|---|"
)


class Peer:
    """A peer server's process tree, started in its own session and stopped with its signal."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"null-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        cmd = [str(BENCH_PYTHON), "-u", str(ROOT / "benchmarks" / "peers" / "null_peers.py"), name, "--port", str(port)]
        libdir = subprocess.run(  # Triton's Python backend stub loads libpython from here
            [str(BENCH_PYTHON), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
            "PYTHONPATH": str(ROOT / "benchmarks"),  # LitServe's spawned worker imports peers.null_litserve
        }
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)  # pytriton stops cleanly only on SIGINT
            self.proc.wait(60)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready in {timeout} s")


def free_triple() -> int:
    """A port p with p + 1 and p + 2 free too (Triton's HTTP, gRPC and metrics ports)."""
    while True:
        port = free_port()
        if port + 2 > 65535:
            continue
        try:
            for p in (port, port + 1, port + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def front_pid(pids: list[int], name: str) -> int | None:
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                return pid
    return None


def measure(
    server: str, request: str, port: int, make: Callable[[], Request], clients: int, seconds: float,
    pids: Callable[[], list[int]], front: Callable[[], int | None],
) -> Row:  # fmt: skip
    req = make()
    front_pid_ = front()
    all_pids = pids()

    async def load() -> tuple[list[Result], float, tuple[float, float]]:
        target = Target("127.0.0.1", port)
        await closed_loop(target, lambda i: req, clients=clients, seconds=min(2.0, seconds))  # warm up
        before = cpu_seconds(all_pids), cpu_seconds([front_pid_]) if front_pid_ else 0.0
        results, elapsed = await closed_loop(target, lambda i: req, clients=clients, seconds=seconds)
        after = cpu_seconds(all_pids), cpu_seconds([front_pid_]) if front_pid_ else 0.0
        target.close()
        return results, elapsed, (after[0] - before[0], after[1] - before[1])

    results, elapsed, (tree_s, front_s) = run(load())
    n = len(results)
    latencies = [r.latency_s * 1000 for r in results]
    return Row(
        server,
        request,
        clients,
        n,
        {str(k): v for k, v in Counter(r.status for r in results).items()},
        n / elapsed,
        front_s / n * 1e6 if front_pid_ else None,
        tree_s / n * 1e6,
        percentile(latencies, 50),
        percentile(latencies, 99),
    )


@contextlib.contextmanager
def held_slot(port: int) -> Iterator[None]:
    """One request in flight that never finishes sending its body."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /predict?model=null HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"\xff" * 10
        )
        time.sleep(0.5)
        yield


def pdserve_rows(repo: Path, args: argparse.Namespace) -> list[Row]:
    rows = []
    requests = {
        "rest_raw": lambda: Request(jpeg(), "image/jpeg", "/predict?model=null&top_k=1"),
        "rest_json": lambda: rest_json("/predict?model=null&top_k=1"),
        "v2_json": lambda: v2_json("null_tensor"),
        "v2_binary": lambda: v2_binary("null_tensor", "softmax_0.tmp_0"),  # the exported program's name
    }
    with Served(repo, env={"PDSERVE_LOG_LEVEL": "info", **args.env}) as server:
        pid = server.proc.pid
        for name, make in requests.items():
            if args.requests and name not in args.requests:
                continue
            for clients in args.clients:
                row = measure("pdserve", name, server.port, make, clients, args.seconds, server.pids, lambda: pid)
                rows.append(row)
                print(rows[-1].line(), flush=True)
    if args.no_refusals:
        return rows
    env = {"PDSERVE_LOG_LEVEL": "info", "PDSERVE_MAX_INFLIGHT_REQUESTS": "1", "PDSERVE_BODY_TIMEOUT_S": "600"}
    with Served(repo, env={**env, **args.env}) as server, held_slot(server.port):
        pid = server.proc.pid
        make = requests["rest_raw"]
        row = measure("pdserve", "rest_raw, refused", server.port, make, 16, args.seconds, server.pids, lambda: pid)
        rows.append(row)
        print(rows[-1].line(), flush=True)
        assert set(rows[-1].statuses) == {"429"}, rows[-1].statuses
    return rows


def peer_rows(name: str, args: argparse.Namespace) -> list[Row]:
    port = free_triple() if name == "triton" else free_port()
    if name == "triton":
        requests = {
            "v2_json": lambda: v2_json("null_tensor"),
            "v2_binary": lambda: v2_binary("null_tensor", "probabilities"),
        }
        ready, comm = "/v2/models/null_tensor/ready", "tritonserver"
    else:
        requests = {"rest_json": lambda: rest_json("/predict")}
        ready, comm = "/health", ""
    peer = Peer(name, port)
    rows = []
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready}", peer.proc)

        def pids() -> list[int]:
            return tree(peer.proc.pid)

        def front() -> int | None:
            return front_pid(pids(), comm) if comm else None

        for request, make in requests.items():
            for clients in args.clients:
                rows.append(measure(name, request, port, make, clients, args.seconds, pids, front))
                print(rows[-1].line(), flush=True)
    finally:
        peer.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--only", nargs="+", default=["pdserve", "triton", "litserve"])
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for pdserve's environment")
    parser.add_argument("--requests", nargs="*", help="pdserve's request kinds to run (default: all)")
    parser.add_argument("--no-refusals", action="store_true", help="skip pdserve's refusal row")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.env = dict(kv.split("=", 1) for kv in args.env)
    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; load generator on the same cores")
    print(HEADER)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="null-model-") as tmp:
        repo = build_repo(Path(tmp))
        if "pdserve" in args.only:
            rows += pdserve_rows(repo, args)
    for peer in ("triton", "litserve"):
        if peer in args.only:
            if not BENCH_PYTHON.exists():
                print(f"{peer}: skipped, {BENCH_PYTHON} missing (make bench creates it)")
                continue
            rows += peer_rows(peer, args)
    if args.json:
        args.json.write_text(json.dumps([vars(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
