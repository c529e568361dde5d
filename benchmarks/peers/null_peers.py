"""The null model behind Triton (nvidia-pytriton) or LitServe: what their front ends cost per request.

The model is pdserve's null model (``benchmarks/null_model.py``) computed in NumPy: the mean of each
channel of a 3x8x8 input, a 3x10 matrix, a softmax. Triton takes the tensor as KServe v2 (JSON or
binary) into its dynamic batcher; LitServe takes an 8x8 JPEG as base64 JSON, its documented path,
and decodes it in its worker.

    .venv-bench/bin/python benchmarks/peers/null_peers.py {triton,litserve} --port P
"""

from __future__ import annotations

import argparse

import numpy as np

WEIGHTS = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)


def null(x: np.ndarray) -> np.ndarray:
    logits = x.mean(axis=(2, 3)) @ WEIGHTS
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def triton(port: int) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    @batch  # type: ignore[untyped-decorator]
    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": null(x)}

    config = TritonConfig(
        http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1", grpc_port=port + 1,
        metrics_port=port + 2, log_verbose=0,
    )  # fmt: skip
    with Triton(config=config) as server:
        server.bind(
            model_name="null_tensor",
            infer_func=infer,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(3, 8, 8))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
            config=ModelConfig(max_batch_size=8, batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
            strict=True,
        )
        server.serve()


def litserve(port: int) -> None:
    import litserve as ls

    from peers.null_litserve import NullAPI

    api = NullAPI(max_batch_size=8, batch_timeout=0.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("server", choices=["triton", "litserve"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    {"triton": triton, "litserve": litserve}[args.server](args.port)
