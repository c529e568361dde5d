"""Quantize EfficientNet-Lite0 with every PTQ algorithm and compare each with FP32, in one run.

Calibration: the fixed subset of the ImageNet sample used for model_repo/efficientnet_lite0_int8
(every second image of val_list.txt, 200 images, i.e. entries 0, 2, 4, ..., 398). Evaluation: all
500 images. Needs FLAGS_enable_pir_api=0 (set here before Paddle is imported).

    FLAGS_enable_pir_api=0 .venv/bin/python scripts/quantize_sweep.py [--algos KL hist mse avg abs_max]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("FLAGS_enable_pir_api", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.pipeline.dataset import read_label_list  # noqa: E402
from app.pipeline.evaluate import LocalModel, evaluate, format_table  # noqa: E402
from app.pipeline.quantize import ALGOS, quantize_repository_model  # noqa: E402
from tests.helpers import sample_dir  # noqa: E402

CALIBRATION_STEP, CALIBRATION_COUNT = 2, 200


def calibration_subset(samples: list, step: int = CALIBRATION_STEP, count: int = CALIBRATION_COUNT) -> list:  # type: ignore[type-arg]
    return samples[::step][:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    samples = read_label_list(sample_dir() / "val_list.txt")
    calibration = calibration_subset(samples)
    fp32 = LocalModel.open(ROOT / "model_repo" / "efficientnet_lite0", cpu_threads=2)
    models, seconds = [fp32], {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos:
            out = Path(tmp) / f"efficientnet_lite0_int8_{algo}"
            record = quantize_repository_model(fp32.path, out, calibration, "imagenet-sample 0,2,..,398", algo=algo)
            seconds[out.name] = record["seconds"]
            models.append(LocalModel.open(out, cpu_threads=2))
        results = evaluate(models, samples=samples, batch_size=8)
    print(format_table(results))
    print("quantization seconds:", json.dumps(seconds))
    if args.json:
        args.json.write_text(json.dumps({"results": [r.__dict__ for r in results], "seconds": seconds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
