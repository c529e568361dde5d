"""How long ONNX Runtime's CUDA provider takes when a session's input shape changes between runs.

After the worker's warm-up (every padded batch size once), batches of one shape, then batches
alternating 8 and 16 images, for each ``cudnn_conv_algo_search``; run on a GPU with the model
folder of ``benchmarks/gpu_serving.py`` (BENCHMARKS.md, "pdserve on a GPU"):

    python benchmarks/ort_shape_change.py --model MODEL_FOLDER --images JPEG_FOLDER
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pdserve.kinds.image_worker import warm_up as _warm_up
from pdserve.model_config import load_model_config
from pdserve.preprocess import Normalizer, load_and_crop
from pdserve.runtime.predictor_config import LoadedPredictor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--per-shape", action="store_true", help="with onnxruntime.session_per_shape on")
    args = parser.parse_args()
    base = load_model_config(args.model)
    jpegs = [p.read_bytes() for p in sorted(args.images.glob("*"))[:64]]
    crops = np.stack([load_and_crop(j, base.preprocessing, 40_000_000) for j in jpegs])
    real = Normalizer(base.preprocessing)(crops)
    for search in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
        ort = base.onnxruntime.model_copy(
            update={"cudnn_conv_algo_search": search, "session_per_shape": args.per_shape}
        )
        config = base.model_copy(
            update={
                "engine": "onnxruntime",
                "device": "gpu:0",
                "max_batch_size": 256,
                "tensorrt": base.tensorrt.model_copy(update={"enabled": False}),
                "onnxruntime": ort,
            }
        )
        runner = LoadedPredictor(config, args.model / "1", "shapes")
        _warm_up(runner, np.zeros((256, *config.input.shape), np.float32), config.padded_batch_sizes)
        for label, sizes in (("same shape (16)", [16] * 12), ("alternating 8/16", [8, 16] * 6)):
            start = time.perf_counter()
            for size in sizes:
                runner.run(real[np.arange(size) % len(real)])
            print(f"{search} {label}: {1000 * (time.perf_counter() - start) / len(sizes):.1f} ms a batch", flush=True)
        del runner
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
