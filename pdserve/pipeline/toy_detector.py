"""A small random-weight detector with PaddleDetection's export signature, for tests and benchmarks.

Inputs ``image`` [N, 3, H, W], ``im_shape`` [N, 2] and ``scale_factor`` [N, 2]; outputs ``bbox``
[M, 6] (class id, score, x1, y1, x2, y2 in the original image's pixels: divided by the scale
factor, as PaddleDetection's post-processing does) and ``bbox_num`` [N] (int32: how many of the M
rows belong to each image). Like a detector after NMS, how many boxes an image keeps depends on
the image: each proposes ``PROPOSALS`` boxes and keeps those scoring over ``KEEP``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROPOSALS = 6
KEEP = 0.2


def build(num_classes: int = 4) -> Any:
    import paddle
    from paddle import nn

    class ToyDetector(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2D(3, 8, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2D(8, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2D(1),
                nn.Flatten(),
            )
            self.boxes = nn.Linear(16, PROPOSALS * 4)
            self.scores = nn.Linear(16, PROPOSALS)
            self.classes = nn.Linear(16, PROPOSALS * num_classes)

        def forward(self, image: Any, im_shape: Any, scale_factor: Any) -> tuple[Any, Any]:
            f = self.features(image) * 8.0  # spread the random weights' outputs over the sigmoid's range
            n = paddle.shape(image)[0]
            corners = nn.functional.sigmoid(self.boxes(f)).reshape([-1, PROPOSALS, 2, 2])  # (x1 y1), (w h)
            hw = im_shape.reshape([-1, 1, 1, 2]).flip(axis=[-1])  # (w, h) of the resized image
            top_left = corners[:, :, 0] * hw[:, :, 0] * 0.6
            size = corners[:, :, 1] * hw[:, :, 0] * 0.4
            xy = paddle.concat([top_left, top_left + size], axis=-1)  # [N, P, 4] in resized pixels
            sxy = scale_factor.flip(axis=[-1]).tile([1, 2]).reshape([-1, 1, 4])  # (sx, sy, sx, sy)
            xy = xy / sxy
            score = nn.functional.sigmoid(self.scores(f)).reshape([-1, PROPOSALS, 1])
            cls = paddle.argmax(self.classes(f).reshape([-1, PROPOSALS, num_classes]), axis=-1, keepdim=True)
            rows = paddle.concat([cls.astype("float32"), score, xy], axis=-1).reshape([-1, 6])
            keep = rows[:, 1] > KEEP
            bbox = paddle.masked_select(rows, keep.unsqueeze(-1).expand([-1, 6])).reshape([-1, 6])
            bbox_num = keep.reshape([n, PROPOSALS]).astype("int32").sum(axis=1).astype("int32")
            return bbox, bbox_num

    return ToyDetector()


def export(prefix: Path, size: int = 64, num_classes: int = 4, seed: int = 0) -> None:
    """``paddle.jit.save`` to ``prefix``: a PIR ``.json`` program + ``.pdiparams`` (Paddle 3's default;
    under ``FLAGS_enable_pir_api=0`` Paddle 3.3 fails to trace it)."""
    import paddle

    paddle.seed(seed)
    net = build(num_classes)
    net.eval()
    spec = [
        paddle.static.InputSpec([None, 3, size, size], "float32", "image"),
        paddle.static.InputSpec([None, 2], "float32", "im_shape"),
        paddle.static.InputSpec([None, 2], "float32", "scale_factor"),
    ]
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(paddle.jit.to_static(net, input_spec=spec, full_graph=True), str(prefix))
    Path(f"{prefix}.pdiparams.info").unlink(missing_ok=True)
