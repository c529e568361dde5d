"""Where pdserve's CPU goes under load: py-spy samples of the HTTP process and the workers, by stage.

Starts ``pdserve serve`` on the shipped repository, drives ``efficientnet_lite0`` with closed-loop
clients posting sample JPEGs, and meanwhile records every process of the server's tree with py-spy
(``--subprocesses``, raw collapsed stacks, ``--nonblocking``). Each sample is put in one stage by
the innermost frame it recognises (decode, resize, normalise, HTTP and JSON, IPC, predictor.run,
...); the table gives the share of CPU samples per process and stage, and the CPU milliseconds
per image they amount to (process-tree CPU from /proc over the same window).

    .venv/bin/python benchmarks/profile_serving.py [--seconds 20] [--clients 16]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.loadgen import Request, Target, closed_loop, run  # noqa: E402
from pdserve.pipeline.sample import sample_list  # noqa: E402
from pdserve.pipeline.served import Served, cpu_seconds  # noqa: E402

PY_SPY = ROOT / ".venv-bench" / "bin" / "py-spy"
MODEL = "efficientnet_lite0"

# (stage, substring of a frame "function (file:line)"); the innermost matching frame decides.
STAGES: list[tuple[str, str]] = [
    ("predictor.run (Paddle)", "predictor_config.py"),
    ("decode (header check, cv2.imdecode, BGR->RGB)", "decode_image"),
    ("shared-memory copy", "transport.py"),
    ("worker loop / IPC", "worker.py"),
    ("worker loop / IPC", "process.py"),
    ("batching", "batching.py"),
    ("admission", "admission.py"),
    ("request parsing (inputs)", "inputs.py"),
    ("response: softmax, top-k, JSON", "predict.py"),
    ("response: softmax, top-k, JSON", "service.py"),
    ("metrics", "prometheus_client"),
    ("HTTP (uvicorn, h11/httptools)", "uvicorn"),
    ("HTTP (uvicorn, h11/httptools)", "httptools"),
    ("ASGI (FastAPI, Starlette)", "starlette"),
    ("ASGI (FastAPI, Starlette)", "fastapi"),
    ("asyncio event loop", "asyncio"),
    ("asyncio event loop", "uvloop"),
]


def _preprocess_lines() -> dict[int, str]:
    """Line numbers of pdserve/preprocess.py's ``crop`` and ``Normalizer``, by what each line does."""
    lines = (ROOT / "pdserve" / "preprocess.py").read_text().splitlines()
    out = {}
    for number, line in enumerate(lines, 1):
        if "cv2.resize" in line:
            out[number] = "resize (cv2.resize)"
        elif "np.subtract" in line or "np.multiply" in line or "np.moveaxis" in line:
            out[number] = "normalise + CHW (worker, whole batch)"
        elif "np.ascontiguousarray(resized" in line:
            out[number] = "crop (uint8 copy)"
    return out


PREPROCESS_LINES = _preprocess_lines()


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # innermost first
        if "preprocess.py:" in frame and "decode_image" not in frame:
            number = int(frame.rsplit(":", 1)[1].rstrip(")"))
            return PREPROCESS_LINES.get(number, "preprocess (other)")
        for stage, needle in STAGES:
            if needle in frame:
                return stage
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    if not PY_SPY.exists():
        raise SystemExit(f"{PY_SPY} missing: make bench creates the benchmark environment")
    bodies = [p.read_bytes() for p, _ in sample_list(64)]
    requests = [Request(b, path=f"/models/{MODEL}/predict") for b in bodies]
    out = Path(tempfile.mkdtemp(prefix="pdserve-profile-")) / "stacks.txt"
    with Served(ROOT / "model_repo") as server:
        warm = Target("127.0.0.1", server.port)  # one per event loop: pooled connections belong to it
        run(closed_loop(warm, lambda i: requests[i % len(requests)], 4, 3))
        warm.close()
        target = Target("127.0.0.1", server.port)
        spy = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(server.proc.pid), "--subprocesses", "--nonblocking",
             "--format", "raw", "--duration", str(int(args.seconds)), "--rate", "200", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cpu_before = cpu_seconds(server.pids())
        results, elapsed = run(closed_loop(target, lambda i: requests[i % len(requests)], args.clients, args.seconds))
        cpu = cpu_seconds(server.pids()) - cpu_before
        spy.wait(60)
        target.close()
    images = sum(r.status == 200 for r in results)
    samples: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        # py-spy prefixes a child's stacks with the parent's "process N:..." frame, then its own.
        frames = stack.split(";")
        kind = "worker" if len(frames) > 1 and frames[1].startswith("process ") else "http"
        samples[(kind, stage_of(stack))] += int(count)
    total = sum(samples.values()) or 1
    ms_per_image = 1000 * cpu / max(images, 1)
    print(f"{images} images in {elapsed:.1f} s ({images / elapsed:.1f}/s), server tree CPU {cpu:.1f} s: "
          f"{ms_per_image:.2f} CPU ms per image; {total} py-spy samples")  # fmt: skip
    print(f"{'process':<8} {'stage':<34} {'share':>6} {'ms/img':>7}")
    for (kind, stage), n in sorted(samples.items(), key=lambda kv: -kv[1]):
        share = n / total
        print(f"{kind:<8} {stage:<34} {share:>6.1%} {share * ms_per_image:>7.2f}")
    print(f"raw stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
