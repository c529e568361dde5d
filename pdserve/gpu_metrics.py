"""GPU utilisation and memory from NVML (``nvidia-ml-py``, the ``gpu-metrics`` extra).

Read when asked (a ``/metrics`` scrape, a ``pdserve bench`` report), never polled. Where there is
no NVML library, no driver or no GPU, the series are absent rather than zero: a dashboard then
shows "no data" for a CPU node instead of a GPU that looks idle.

NVML is passed in (``GpuMonitor(nvml)``) so that the tests drive a fake one; by default it is the
``pynvml`` module that nvidia-ml-py installs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    uuid: str
    utilization_percent: float  # share of the last sample period a kernel ran (NVML's "gpu" rate)
    memory_used_bytes: int
    memory_total_bytes: int

    @property
    def memory_used_mib(self) -> float:
        return self.memory_used_bytes / 2**20


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuMonitor:
    """NVML, initialised once; ``available`` is False where it cannot be (no library, driver or GPU)."""

    def __init__(self, nvml: Any = None) -> None:
        self.reason = ""
        self._nvml = nvml
        if self._nvml is None:
            try:
                import pynvml  # type: ignore[import-not-found,unused-ignore]

                self._nvml = pynvml
            except ImportError:
                self.reason = "nvidia-ml-py is not installed (pip install 'pdserve[gpu-metrics]')"
                return
        try:
            self._nvml.nvmlInit()
            self.count = int(self._nvml.nvmlDeviceGetCount())
        except Exception as exc:  # NVMLError: no driver, no permission, ...
            self.reason = f"NVML unavailable: {exc}"
            self.count = 0
            return
        if self.count == 0:
            self.reason = "NVML sees no GPU"

    @property
    def available(self) -> bool:
        return not self.reason

    def read(self) -> list[GpuReading]:
        """One reading per GPU; [] when unavailable or when NVML fails now (logged once per failure)."""
        if not self.available:
            return []
        nvml, readings = self._nvml, []
        try:
            for index in range(self.count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                readings.append(
                    GpuReading(
                        index,
                        _text(nvml.nvmlDeviceGetName(handle)),
                        _text(nvml.nvmlDeviceGetUUID(handle)),
                        float(rates.gpu),
                        int(memory.used),
                        int(memory.total),
                    )
                )
        except Exception as exc:
            log.warning("NVML read failed: %s", exc)
            return []
        return readings

    def summary(self) -> dict[str, Any]:
        """For reports: utilisation and memory per GPU, or None (not 0) for each where there is none."""
        readings = self.read()
        if not readings:
            return {"gpu_utilization": None, "gpu_memory_mib": None, "gpus": []}
        return {
            "gpu_utilization": max(r.utilization_percent for r in readings),
            "gpu_memory_mib": round(sum(r.memory_used_mib for r in readings), 1),
            "gpus": [
                {
                    "index": r.index,
                    "name": r.name,
                    "utilization_percent": r.utilization_percent,
                    "memory_used_mib": round(r.memory_used_mib, 1),
                    "memory_total_mib": round(r.memory_total_bytes / 2**20, 1),
                }
                for r in readings
            ],
        }


class GpuCollector(Collector):
    """Prometheus series per GPU, read at scrape time; none at all without a GPU."""

    def __init__(self, monitor: GpuMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        readings = self.monitor.read()
        if not readings:
            return
        labels = ["gpu", "name", "uuid"]
        utilization = GaugeMetricFamily(
            "pdserve_gpu_utilization_percent",
            "Share of the last NVML sample period in which a kernel ran on the GPU, 0-100.",
            labels=labels,
        )
        used = GaugeMetricFamily("pdserve_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=labels)
        total = GaugeMetricFamily("pdserve_gpu_memory_total_bytes", "GPU memory in total.", labels=labels)
        for r in readings:
            values = [str(r.index), r.name, r.uuid]
            utilization.add_metric(values, r.utilization_percent)
            used.add_metric(values, r.memory_used_bytes)
            total.add_metric(values, r.memory_total_bytes)
        yield utilization
        yield used
        yield total
