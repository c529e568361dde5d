"""Issue 20's targets, measured: PIR vs legacy EfficientNet-Lite0 (throughput and memory) and the
detection kind's batching (throughput at 8 clients, every answer checked against the image alone).

1. Predictors, each configuration in a fresh spawned process as pdserve's workers are (1 math thread,
   oneDNN, IR optimisation): the shipped legacy program with and without ``enable_memory_optim``, and
   the same weights re-exported as PIR (``pdserve/pipeline/efficientnet_pir.py``) without it (with it,
   Paddle 3.3.1 cannot create the predictor: the error is printed). Images/s at batch 1 and 8 over
   ``--iterations`` runs after warm-up, rounds alternating; peak RSS of the process.
2. A real ``pdserve serve`` with the PaddleDetection-signature toy detector (``toy_detector.py``, PIR,
   ``--size`` input) from an ``infer_cfg.yml``: 8 closed-loop clients posting one JPEG each, with
   ``max_batch_size`` 8 and then 1 (one image at a time). Every response's boxes are compared with
   the same image's boxes from a request alone.

    .venv/bin/python benchmarks/published_models.py [--rounds 3] [--seconds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import platform
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LEGACY = ROOT / "model_repo" / "efficientnet_lite0"

INFER_CFG = """\
mode: paddle
draw_threshold: 0.5
arch: YOLO
Preprocess:
- {{interp: 2, keep_ratio: false, target_size: [{size}, {size}], type: Resize}}
- {{is_scale: true, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], type: NormalizeImage}}
- {{type: Permute}}
label_list: [person, bicycle, car, dog]
"""


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def predictor_child(program: str, params: str, memory_optim: bool, iterations: int, out: Queue[dict[str, Any]]) -> None:
    from paddle import inference

    try:
        cfg = inference.Config(program, params)
        cfg.disable_glog_info()
        cfg.switch_ir_optim(True)
        if memory_optim:
            cfg.enable_memory_optim(True)
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(1)
        cfg.enable_mkldnn()
        predictor = inference.create_predictor(cfg)
    except Exception as exc:
        out.put({"error": str(exc).strip().splitlines()[0][:200]})
        return
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    output = predictor.get_output_handle(predictor.get_output_names()[0])
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {}
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        for _ in range(3):  # builds oneDNN's primitives for this shape
            handle.reshape(list(x.shape))
            handle.copy_from_cpu(x)
            predictor.run()
        start = time.perf_counter()
        for _ in range(iterations):
            handle.reshape(list(x.shape))
            handle.copy_from_cpu(x)
            predictor.run()
            output.copy_to_cpu()
        result[f"batch{batch}_images_per_s"] = batch * iterations / (time.perf_counter() - start)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put(result)


def measure_predictors(pir_dir: Path, rounds: int, iterations: int) -> dict[str, Any]:
    configs = {
        "legacy, memory_optim on (served)": (LEGACY / "1" / "model.pdmodel", LEGACY / "1" / "model.pdiparams", True),
        "legacy, memory_optim off": (LEGACY / "1" / "model.pdmodel", LEGACY / "1" / "model.pdiparams", False),
        "pir, memory_optim off (served)": (pir_dir / "inference.json", pir_dir / "inference.pdiparams", False),
        "pir, memory_optim on": (pir_dir / "inference.json", pir_dir / "inference.pdiparams", True),
    }
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, (program, params, optim) in configs.items():
            queue: Queue[dict[str, Any]] = ctx.Queue()
            proc = ctx.Process(target=predictor_child, args=(str(program), str(params), optim, iterations, queue))
            proc.start()
            runs[name].append(queue.get())
            proc.join()
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        if "error" in results[0]:
            summary[name] = {"error": results[0]["error"]}
            continue
        summary[name] = {key: float(np.median([r[key] for r in results])) for key in results[0]}
    return summary


def jpeg(seed: int, size: tuple[int, int]) -> bytes:
    import cv2
    from PIL import Image

    noise = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(cv2.GaussianBlur(noise, (9, 9), 3)).save(out, "JPEG", quality=90)
    return out.getvalue()


def measure_detection(root: Path, size: int, seconds: float, clients: int) -> dict[str, Any]:
    import httpx
    import yaml

    from pdserve.pipeline import loadgen
    from pdserve.pipeline.served import Served

    model = root / "repo" / "detector"
    (model / "1").mkdir(parents=True)
    prefix = model / "1" / "model"
    export = "import sys; from pathlib import Path; from pdserve.pipeline import toy_detector as t; "
    export += "t.export(Path(sys.argv[1]), int(sys.argv[2]))"
    subprocess.run([sys.executable, "-c", export, str(prefix), str(size)], check=True, cwd=ROOT, capture_output=True)
    (model / "1" / "infer_cfg.yml").write_text(INFER_CFG.format(size=size))
    rng = np.random.default_rng(1)
    shapes = [(int(rng.integers(240, 720)), int(rng.integers(240, 960))) for _ in range(32)]
    images = [jpeg(100 + i, s) for i, s in enumerate(shapes)]
    results: dict[str, Any] = {}
    for batch in (8, 1):
        config = {
            "instances": 1,
            "cpu_threads": 1,
            "max_batch_size": batch,
            "max_queue_delay_ms": 2,
            "max_queue_size": 256,
        }
        (model / "config.yaml").write_text(yaml.safe_dump(config))
        with Served(root / "repo") as server:
            alone = []
            for data in images:  # each image alone, one request at a time: the reference boxes
                body = httpx.post(
                    f"{server.url}/predict?score_threshold=0", content=data, headers={"Content-Type": "image/jpeg"}
                )
                alone.append(body.json()["boxes"])
            target = loadgen.Target("127.0.0.1", server.port)

            def pick(i: int) -> loadgen.Request:
                return loadgen.Request(
                    images[i % len(images)], path="/predict?score_threshold=0", kind=str(i % len(images))
                )

            loadgen.run(loadgen.closed_loop(target, pick, clients, 2.0))  # warm-up
            target.close()
            target = loadgen.Target("127.0.0.1", server.port)  # connections belong to the loop that opened them
            done, elapsed = loadgen.run(loadgen.closed_loop(target, pick, clients, seconds))
            target.close()
            before = httpx.get(f"{server.url}/metrics").text
            mismatched = 0
            for r in done:
                boxes = json.loads(r.body)["boxes"] if r.status == 200 else None
                expected = alone[int(r.kind)]
                same = (
                    boxes is not None
                    and len(boxes) == len(expected)
                    and all(
                        a["class_id"] == b["class_id"]
                        and np.allclose([a["score"], *a["box"]], [b["score"], *b["box"]], rtol=1e-5, atol=1e-3)
                        for a, b in zip(boxes, expected, strict=True)
                    )
                )
                mismatched += not same
            from pdserve.pipeline.served import metric

            batches = metric(before, "pdserve_batch_size_count", model="detector")
            items = metric(before, "pdserve_batch_size_sum", model="detector")
        results[f"max_batch_size {batch}"] = {
            "images_per_s": len(done) / elapsed,
            "requests": len(done),
            "errors": sum(r.status != 200 for r in done),
            "boxes_differing_from_alone": mismatched,
            "mean_batch": items / batches if batches else None,
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", type=int, default=320, help="the toy detector's input side")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    report: dict[str, Any] = {"cpu": cpu_name(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as tmp:
        pir = Path(tmp) / "efficientnet_pir"
        subprocess.run(
            [sys.executable, "-m", "pdserve.pipeline.efficientnet_pir", str(LEGACY / "1"), str(pir)],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        report["predictors"] = measure_predictors(pir, args.rounds, args.iterations)
        report["detection"] = measure_detection(Path(tmp), args.size, args.seconds, args.clients)
    print(f"CPU: {report['cpu']}")
    print("\nEfficientNet-Lite0 predictor, 1 thread (median of rounds):")
    for name, r in report["predictors"].items():
        if "error" in r:
            print(f"  {name:36s} cannot be created: {r['error']}")
        else:
            print(
                f"  {name:36s} batch1 {r['batch1_images_per_s']:6.1f}/s  batch8 {r['batch8_images_per_s']:6.1f}/s  "
                f"peak RSS {r['peak_rss_mib']:6.0f} MiB"
            )
    legacy, pir_r = (
        report["predictors"]["legacy, memory_optim on (served)"],
        report["predictors"]["pir, memory_optim off (served)"],
    )
    for b in (1, 8):
        print(f"  PIR / legacy at batch {b}: {pir_r[f'batch{b}_images_per_s'] / legacy[f'batch{b}_images_per_s']:.3f}")
    print(f"\nDetection (toy detector {args.size}x{args.size}, {args.clients} clients, {args.seconds:.0f} s):")
    for name, r in report["detection"].items():
        print(
            f"  {name:18s} {r['images_per_s']:6.1f} images/s  mean batch {r['mean_batch'] or 0:.2f}  errors "
            f"{r['errors']}  boxes differing from alone {r['boxes_differing_from_alone']}/{r['requests']}"
        )
    d = report["detection"]
    print(
        "  batching / one at a time: "
        f"{d['max_batch_size 8']['images_per_s'] / d['max_batch_size 1']['images_per_s']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
