"""Issue 25: instances spread over the GPUs of a model's devices list, checked against a fake NVML."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pdserve.errors import ModelLoadError
from pdserve.gpu_metrics import GpuMonitor
from pdserve.model_config import ModelConfig
from pdserve.runtime.placement import per_device, place
from tests.unit.test_gpu_metrics import FakeNVML


def test_instances_on_each_listed_gpu_interleaved() -> None:
    config = ModelConfig(devices=["gpu:0", "gpu:1"], instances=2, engine="onnxruntime")
    placed = place(config, "m", GpuMonitor(FakeNVML(gpus=2)))
    assert [c.device for c in placed] == ["gpu:0", "gpu:1", "gpu:0", "gpu:1"]
    assert all(c.instances == 1 and c.devices is None and c.gpu_id is not None for c in placed)
    assert per_device(placed) == {"gpu:0": 2, "gpu:1": 2}


def test_a_single_device_is_unchanged() -> None:
    placed = place(ModelConfig(instances=3), "m")
    assert [c.device for c in placed] == ["cpu"] * 3


def test_a_gpu_nvml_does_not_see_is_refused_by_name() -> None:
    config = ModelConfig(devices=["gpu:0", "gpu:1"])
    with pytest.raises(ModelLoadError, match=r"gpu:1 not on this host \(NVML sees 1 GPU: gpu:0..gpu:0\)"):
        place(config, "m", GpuMonitor(FakeNVML(gpus=1)))
    # without NVML nothing is checked here; the worker's engine refuses a missing device
    assert len(place(config, "m", GpuMonitor(FakeNVML(init_fails=True)))) == 2


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (["gpu:0", "gpu:0"], "names a GPU twice"),
        (["cpu"], "lists GPUs"),
        ([], "lists GPUs"),
    ],
)
def test_devices_are_validated(devices: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig(devices=devices)


def test_device_and_devices_must_agree() -> None:
    with pytest.raises(ValidationError, match="disagree"):
        ModelConfig(device="gpu:1", devices=["gpu:0", "gpu:1"])
    with pytest.raises(ValidationError, match="openvino runs on device cpu only"):
        ModelConfig(devices=["gpu:0"], engine="openvino")
