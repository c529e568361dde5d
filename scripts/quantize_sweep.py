"""Quantize EfficientNet-Lite0 with every PTQ algorithm and compare each with FP32, in one run.

Calibration: data/imagenet-sample-calibration.txt, the 200 images (entries 0, 2, ..., 398 of the
sample's val_list.txt) that model_repo/efficientnet_lite0_int8 was made with. Evaluation: one of the
disjoint splits, data/imagenet-sample-<split>.txt (default selection: for choosing; report only
for the numbers published), refused if it shares an image with the calibration list.
Needs FLAGS_enable_pir_api=0 (set here before Paddle is imported).

    FLAGS_enable_pir_api=0 .venv/bin/python scripts/quantize_sweep.py [--algos ...] [--split selection]
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
from app.pipeline.evaluate import LocalModel, check_calibration_overlap, evaluate, format_table  # noqa: E402
from app.pipeline.quantize import ALGOS, quantize_repository_model  # noqa: E402
from tests.helpers import sample_dir  # noqa: E402

CALIBRATION_LIST = ROOT / "data" / "imagenet-sample-calibration.txt"  # the list make int8-model uses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--split", choices=["selection", "report"], default="selection")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    samples = read_label_list(ROOT / "data" / f"imagenet-sample-{args.split}.txt", sample_dir())
    calibration = read_label_list(CALIBRATION_LIST, sample_dir())
    fp32 = LocalModel.open(ROOT / "model_repo" / "efficientnet_lite0", cpu_threads=2)
    models, seconds = [fp32], {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos:
            out = Path(tmp) / f"efficientnet_lite0_int8_{algo}"
            record = quantize_repository_model(fp32.path, out, calibration, str(CALIBRATION_LIST), algo=algo)
            seconds[out.name] = record["seconds"]
            models.append(LocalModel.open(out, cpu_threads=2))
        check_calibration_overlap(models, samples, strict=True)
        results = evaluate(models, samples=samples, batch_size=8)
    print(format_table(results))
    print("quantization seconds:", json.dumps(seconds))
    if args.json:
        args.json.write_text(json.dumps({"results": [r.__dict__ for r in results], "seconds": seconds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
