"""``pdserve export``: a Paddle model into a model-repository folder (config + version folder)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pdserve.model_config import CONFIG_FILE, Preprocessing, version_folders
from pdserve.pipeline.errors import PipelineError

EFFICIENTNET_PREPROCESSING = Preprocessing(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


@dataclass(frozen=True)
class Architecture:
    build: Callable[[int], Any]  # num_classes -> paddle.nn.Layer (softmax not included)
    preprocessing: Preprocessing
    description: str


def _vision(name: str) -> Callable[[int], Any]:
    def build(num_classes: int) -> Any:
        from paddle.vision import models

        return getattr(models, name)(pretrained=False, num_classes=num_classes)

    return build


def _efficientnet(num_classes: int) -> Any:
    from pdserve.pipeline.efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0(num_classes=num_classes, with_softmax=False)


def _tiny_cnn(num_classes: int) -> Any:
    """Four quantizable layers on 56x56 inputs: seconds to export, quantize and search (smoke tests)."""
    from paddle import nn

    def block(conv: Any, channels: int, relu6: bool = True) -> list[Any]:
        return [conv, nn.BatchNorm2D(channels), *([nn.ReLU6()] if relu6 else [])]

    return nn.Sequential(
        *block(nn.Conv2D(3, 8, 3, stride=2, padding=1, bias_attr=False), 8),
        *block(nn.Conv2D(8, 8, 3, padding=1, groups=8, bias_attr=False), 8),
        *block(nn.Conv2D(8, 16, 1, bias_attr=False), 16, relu6=False),
        nn.AdaptiveAvgPool2D(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


ARCHITECTURES: dict[str, Architecture] = {
    "resnet50": Architecture(_vision("resnet50"), Preprocessing(), "ResNet-50 (paddle.vision.models)"),
    "mobilenet_v2": Architecture(_vision("mobilenet_v2"), Preprocessing(), "MobileNetV2 (paddle.vision.models)"),
    "mobilenet_v3_small": Architecture(
        _vision("mobilenet_v3_small"), Preprocessing(), "MobileNetV3-Small (paddle.vision.models)"
    ),
    "mobilenet_v3_large": Architecture(
        _vision("mobilenet_v3_large"), Preprocessing(), "MobileNetV3-Large (paddle.vision.models)"
    ),
    "efficientnet_lite0": Architecture(_efficientnet, EFFICIENTNET_PREPROCESSING, "EfficientNet-Lite0"),
    "tiny_cnn": Architecture(
        _tiny_cnn, Preprocessing(resize_shorter=64, crop=56), "a 4-layer CNN for smoke tests of the offline tools"
    ),
}


def require_legacy_format() -> None:
    pir = os.environ.get("FLAGS_enable_pir_api", "")  # noqa: SIM112 - Paddle reads this exact name
    if pir.lower() not in ("0", "false"):
        raise PipelineError(
            "set FLAGS_enable_pir_api=0 in the environment before Python starts (the pdserve command does "
            "this for you): only the legacy model.pdmodel format can be quantized"
        )


def save_inference_model(model: Any, version_dir: Path, input_shape: tuple[int, int, int]) -> Path:
    """``paddle.jit.save`` with a dynamic batch dimension, input named ``x``, as ``model.pdmodel``."""
    import paddle

    require_legacy_format()
    version_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    spec = [paddle.static.InputSpec([None, *input_shape], "float32", name="x")]
    prefix = version_dir / "model"
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), str(prefix))
    (version_dir / "model.pdiparams.info").unlink(missing_ok=True)  # only paddle.jit.load reads it
    pdmodel = prefix.with_suffix(".pdmodel")
    if not pdmodel.exists():
        raise PipelineError(f"paddle.jit.save did not write {pdmodel}; is FLAGS_enable_pir_api=0 set?")
    return pdmodel


class _Softmax:
    """Wraps a network so the exported program ends in a softmax."""

    @staticmethod
    def wrap(net: Any) -> Any:
        import paddle

        class WithSoftmax(paddle.nn.Layer):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Any) -> Any:
                return paddle.nn.functional.softmax(self.inner(x), axis=-1)

        return WithSoftmax(net)


def next_version(model_dir: Path) -> int:
    return max(version_folders(model_dir), default=0) + 1


def write_config(model_dir: Path, doc: dict[str, Any]) -> Path:
    path = model_dir / CONFIG_FILE
    path.write_text(
        "# Written by pdserve; every field is documented in pdserve/model_config.py.\n" + yaml.safe_dump(doc)
    )
    return path


def export_model(
    arch: str,
    output: Path,
    *,
    weights: Path | None = None,
    pretrained: bool = False,
    softmax: bool = True,
    num_classes: int = 1000,
    labels: Path | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    """Export ``arch`` into ``output`` (a model folder); returns what was written."""
    import paddle

    if arch not in ARCHITECTURES:
        raise PipelineError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if weights is not None and pretrained:
        raise PipelineError("give --weights or --pretrained, not both")
    if pretrained and arch != "efficientnet_lite0":
        raise PipelineError("--pretrained is available for efficientnet_lite0 only; use --weights file.pdparams")
    if labels is not None and not labels.is_file():
        raise PipelineError(f"labels file {labels} not found")
    spec = ARCHITECTURES[arch]
    if pretrained:
        from pdserve.pipeline.efficientnet_lite import load_pretrained

        net = load_pretrained(with_softmax=False)
    else:
        net = spec.build(num_classes)
        if weights is not None:
            if not weights.is_file():
                raise PipelineError(f"weights file {weights} not found")
            state = paddle.load(str(weights))
            missing, unexpected = net.set_state_dict(state)
            if missing or unexpected:
                raise PipelineError(
                    f"{weights} does not fit {arch}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
                )
    model = _Softmax.wrap(net) if softmax else net
    output.mkdir(parents=True, exist_ok=True)
    version = version or next_version(output)
    version_dir = output / str(version)
    if version_dir.exists():
        raise PipelineError(f"{version_dir} exists already; choose another --version")
    shape = (3, spec.preprocessing.crop, spec.preprocessing.crop)
    save_inference_model(model, version_dir, shape)
    random_weights = weights is None and not pretrained
    config_path = output / CONFIG_FILE
    if not config_path.exists():
        doc: dict[str, Any] = {
            "description": spec.description + (" with RANDOM weights" if random_weights else ""),
            "input": {"name": "x", "shape": list(shape), "dtype": "float32"},
            "preprocessing": spec.preprocessing.model_dump(mode="json"),
            "output": {"softmax_applied": softmax},
            "precision": "fp32",
            "device": "cpu",
            "instances": 1,
            "cpu_threads": 1,
            "max_batch_size": 8,
            "max_queue_delay_ms": 0,
            "random_weights": random_weights,
        }
        if labels is not None:
            shutil.copyfile(labels, output / "labels.txt")
            doc["labels"] = "labels.txt"
        write_config(output, doc)
    return {"model_dir": str(output), "version": version, "arch": arch, "random_weights": random_weights}
