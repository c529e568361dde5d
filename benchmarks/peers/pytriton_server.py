"""Triton's dynamic batcher through nvidia-pytriton: JPEG bytes in a BYTES tensor, top-5 out.

Triton (C++) takes the HTTP request and batches; the Python function below decodes, preprocesses
and predicts each batch. It stops cleanly only on SIGINT.
"""

from __future__ import annotations

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from peers.common import Classifier, arguments

args = arguments(__doc__ or "")
classifier = Classifier(args.model_dir, args.threads)


@batch  # type: ignore[untyped-decorator]
def infer(image: np.ndarray) -> dict[str, np.ndarray]:
    classes, scores = classifier.top5([classifier.decode(bytes(row[0])) for row in image])
    return {"classes": classes.astype(np.int32), "scores": scores.astype(np.float32)}


if __name__ == "__main__":
    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1", grpc_port=args.port + 1,
        metrics_port=args.port + 2, log_verbose=0,
    )  # fmt: skip
    with Triton(config=config) as triton:
        triton.bind(
            model_name="efficientnet_lite0",
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="classes", dtype=np.int32, shape=(5,)),
                Tensor(name="scores", dtype=np.float32, shape=(5,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.max_delay_ms * 1000)),
            ),
            strict=True,
        )
        triton.serve()
