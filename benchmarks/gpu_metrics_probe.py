"""pdserve's NVML metrics on a real GPU: idle, then while PyTorch keeps the GPU busy.

Paddle is not needed (nor used): the load is a PyTorch matmul loop, only so that utilisation and
memory move. Prints ``GpuMonitor.summary()`` and the ``/metrics`` lines pdserve would serve.

    python benchmarks/gpu_metrics_probe.py        # on a machine with an NVIDIA GPU and nvidia-ml-py
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdserve.gpu_metrics import GpuMonitor
from pdserve.metrics import Metrics


def show(label: str, monitor: GpuMonitor, metrics: Metrics) -> None:
    print(f"== {label}")
    print(json.dumps(monitor.summary(), indent=2))
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("pdserve_gpu"):
            print(line)


def main() -> int:
    monitor = GpuMonitor()
    print(f"NVML available: {monitor.available} {monitor.reason}")
    metrics = Metrics(gpus=monitor)
    show("idle", monitor, metrics)
    try:
        import torch
    except ImportError:
        print("no PyTorch: idle readings only")
        return 0
    stop = threading.Event()
    a = torch.randn(8192, 8192, device="cuda")
    ballast = torch.empty(4 * 2**30, dtype=torch.uint8, device="cuda")  # noqa: F841 (4 GiB more in use)

    def busy() -> None:
        while not stop.is_set():
            (a @ a).sum().item()

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    time.sleep(3)  # NVML's utilisation is an average over its last sample period
    show("busy (PyTorch matmul loop, 4 GiB ballast)", monitor, metrics)
    stop.set()
    worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
