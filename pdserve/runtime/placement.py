"""Where a model's workers run: one config per worker, its ``device`` set from ``devices``, checked
against the GPUs NVML sees (issue 25; the pool starts each worker with its own config)."""

from __future__ import annotations

from pdserve.errors import ModelLoadError
from pdserve.gpu_metrics import GpuMonitor
from pdserve.model_config import ModelConfig


def place(config: ModelConfig, model: str = "", gpus: GpuMonitor | None = None) -> list[ModelConfig]:
    """A config per worker with one device each; ``ModelLoadError`` naming a GPU that NVML does not see.

    Without NVML (``gpus`` None or unavailable) GPUs are not checked here: the engine refuses a missing
    device when the worker loads."""
    devices = config.instance_devices
    if gpus is not None and gpus.available:
        wanted = sorted({int(d.split(":")[1]) for d in devices if d.startswith("gpu:")})
        missing = [f"gpu:{i}" for i in wanted if i >= gpus.count]
        if missing:
            raise ModelLoadError(
                f"model {model!r}: devices {', '.join(missing)} not on this host (NVML sees {gpus.count} GPU"
                f"{'' if gpus.count == 1 else 's'}: gpu:0..gpu:{gpus.count - 1})"
            )
    return [config.model_copy(update={"device": d, "devices": None, "instances": 1}) for d in devices]


def per_device(configs: list[ModelConfig]) -> dict[str, int]:
    """Workers per device, for /models and the logs."""
    counts: dict[str, int] = {}
    for c in configs:
        counts[c.device] = counts.get(c.device, 0) + 1
    return counts
