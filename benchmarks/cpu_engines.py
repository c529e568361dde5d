"""Paddle oneDNN vs OpenVINO vs ONNX Runtime on this CPU, FP32 and INT8, in-process (the worker's
``LoadedPredictor``), with accuracy.

For each engine and precision: images/s at batch 1 and 8 with ``--threads`` math threads (median
of ``--repeats`` timed runs), top-1 against the labels of ``--report-list`` (issue 18's report
split; nothing is chosen on it), and against Paddle oneDNN FP32 on every image of ``--sample-list``:
top-1 agreement and the largest output difference.

    python benchmarks/cpu_engines.py --fp32 FOLDER_WITH_MODEL_ONNX --paddle-int8 model_repo/efficientnet_lite0_int8 \
        --ort-int8 FOLDER --sample-list ../shared/data/imagenet-sample/val_list.txt \
        --report-list data/imagenet-sample-report.txt --data-root ../shared/data/imagenet-sample --out cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.pipeline.bench import cpu_name
from pdserve.pipeline.dataset import load_images, read_label_list
from pdserve.pipeline.local import LocalModel
from pdserve.runtime.predictor_config import LoadedPredictor


def outputs(runner: LoadedPredictor, images: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([runner.run(images[i : i + batch]) for i in range(0, len(images), batch)])


def speed(runner: LoadedPredictor, images: np.ndarray, batch: int, seconds: float, repeats: int) -> float:
    x = images[np.arange(batch) % len(images)]
    for _ in range(3):
        runner.run(x)
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            runner.run(x)
            n += 1
        rates.append(n * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fp32", type=Path, required=True, help="FP32 model folder whose version holds model.onnx")
    p.add_argument("--paddle-int8", type=Path, required=True, help="Paddle INT8 model folder (pdserve quantize)")
    p.add_argument(
        "--ort-int8", type=Path, nargs="+", required=True, help="ONNX Runtime QDQ model folders (convert --int8-output)"
    )
    p.add_argument("--sample-list", type=Path, required=True)
    p.add_argument("--report-list", type=Path, required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    fp32, int8 = (LocalModel.open(f, cpu_threads=args.threads) for f in (args.fp32, args.paddle_int8))
    ort8 = [LocalModel.open(f, cpu_threads=args.threads) for f in args.ort_int8]
    spec = fp32.config.preprocessing
    sample = read_label_list(args.sample_list, args.data_root)
    report_split = read_label_list(args.report_list, args.data_root)
    images = load_images(sample, spec, "sample")
    index = {s.path: i for i, s in enumerate(sample)}
    report_rows = np.array([index[s.path] for s in report_split])
    labels = np.array([s.label for s in report_split])
    variants = [
        ("Paddle oneDNN", "FP32", fp32, "onednn"),
        ("OpenVINO (Paddle's)", "FP32", fp32, "openvino"),
        ("ONNX Runtime", "FP32", fp32, "onnxruntime"),
        ("Paddle oneDNN", "INT8", int8, "onednn"),
        ("OpenVINO (Paddle's)", "INT8", int8, "openvino"),
        *((f"ONNX Runtime QDQ ({(m.config.calibration or {}).get('algo')})", "INT8", m, "onnxruntime") for m in ort8),
    ]
    result: dict[str, Any] = {"cpu": cpu_name(), "threads": args.threads, "images": len(sample), "rows": []}
    reference: np.ndarray | None = None
    for name, precision, model, engine in variants:
        config = model.config.model_copy(update={"engine": engine, "device": "cpu"})
        row: dict[str, Any] = {"engine": name, "precision": precision, "model": model.name}
        try:
            runner = LoadedPredictor(config, model.version_dir, model.name)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            result["rows"].append(row)
            print(row, flush=True)
            continue
        probs = outputs(runner, images)
        if reference is None:
            reference = probs
        row["top1_report_split"] = round(100 * float((probs[report_rows].argmax(1) == labels).mean()), 2)
        row["top1_agree_with_paddle_fp32"] = int((probs.argmax(1) == reference.argmax(1)).sum())
        row["max_abs_diff_vs_paddle_fp32"] = float(np.abs(probs - reference).max())
        row["images_per_s_batch1"] = round(speed(runner, images, 1, args.seconds, args.repeats), 1)
        row["images_per_s_batch8"] = round(speed(runner, images, 8, args.seconds, args.repeats), 1)
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        del runner
        args.out.write_text(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
