"""GPU metrics against a fake NVML: series per GPU when there are GPUs, absent (not zero) otherwise."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest

from pdserve.gpu_metrics import GpuMonitor
from pdserve.metrics import Metrics


class NVMLError(Exception):
    pass


class FakeNVML:
    """The part of pynvml pdserve calls, with two GPUs (or none, or a broken driver)."""

    def __init__(self, gpus: int = 2, init_fails: bool = False) -> None:
        self.gpus, self.init_fails, self.read_fails = gpus, init_fails, False

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if self.read_fails:
            raise NVMLError("GPU is lost")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=[37, 0][handle], memory=5)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=[3 * 2**30, 2**20][handle], total=80 * 2**30, free=0)

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"  # older pynvml returns bytes

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:04d}"


def test_series_per_gpu_in_metrics() -> None:
    text = generate_latest(Metrics(gpus=GpuMonitor(FakeNVML())).registry).decode()
    assert 'pdserve_gpu_utilization_percent{gpu="0",name="NVIDIA H100 80GB HBM3",uuid="GPU-0000"} 37.0' in text
    assert 'pdserve_gpu_utilization_percent{gpu="1",name="NVIDIA H100 80GB HBM3",uuid="GPU-0001"} 0.0' in text
    used = 'pdserve_gpu_memory_used_bytes{gpu="0",name="NVIDIA H100 80GB HBM3",uuid="GPU-0000"} '
    assert float(text.split(used)[1].split()[0]) == 3 * 2**30
    assert "pdserve_gpu_memory_total_bytes" in text


def test_absent_not_zero_without_gpu_driver_or_library() -> None:
    for monitor in (GpuMonitor(FakeNVML(gpus=0)), GpuMonitor(FakeNVML(init_fails=True))):
        assert not monitor.available
        assert monitor.reason
        assert "pdserve_gpu" not in generate_latest(Metrics(gpus=monitor).registry).decode()
        assert monitor.summary() == {"gpu_utilization": None, "gpu_memory_mib": None, "gpus": []}
    assert "Driver Not Loaded" in GpuMonitor(FakeNVML(init_fails=True)).reason


def test_a_failing_read_drops_the_series_and_keeps_serving() -> None:
    nvml = FakeNVML()
    metrics = Metrics(gpus=GpuMonitor(nvml))
    nvml.read_fails = True
    text = generate_latest(metrics.registry).decode()
    assert "pdserve_gpu" not in text
    assert "pdserve_request_duration_seconds" in text


def test_summary_for_bench_reports() -> None:
    summary = GpuMonitor(FakeNVML()).summary()
    assert summary["gpu_utilization"] == 37.0
    assert summary["gpu_memory_mib"] == 3 * 1024 + 1
    assert [g["index"] for g in summary["gpus"]] == [0, 1]
    assert summary["gpus"][0]["memory_total_mib"] == 80 * 1024
