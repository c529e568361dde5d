"""Does decoding large JPEGs at a reduced scale (``preprocessing.reduced_jpeg_decode``) keep top-1?

The sample's photos are ImageNet-sized (shorter side under 512), too small for the decoder's 1/2,
1/4 or 1/8 scale to apply. So each photo of a split is enlarged ``--scale`` times (bicubic) and
re-encoded as a JPEG (quality 92): a phone-sized photo whose content is known. Each is then
classified after a full decode and after a reduced one, with the same model; prints the time per
image of decode + preprocessing and top-1 both ways.

    .venv/bin/python benchmarks/jpeg_reduction.py [--split report] [--scale 4] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.model_config import load_model_config, version_folders  # noqa: E402
from pdserve.pipeline.sample import sample_split  # noqa: E402
from pdserve.preprocess import image_size, jpeg_reduction, load_and_preprocess  # noqa: E402
from pdserve.runtime.predictor_config import LoadedPredictor  # noqa: E402


def enlarged(path: Path, scale: float) -> bytes:
    image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, path
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    return bytes(cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 92])[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="report", choices=["calibration", "selection", "report"])
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()
    rows = sample_split(args.split)
    photos = [enlarged(path, args.scale) for path, _ in rows]
    model_dir = ROOT / "model_repo" / args.model
    config = load_model_config(model_dir).model_copy(update={"cpu_threads": 2})
    predictor = LoadedPredictor(config, model_dir / str(max(version_folders(model_dir))), args.model)
    sizes = [image_size(p)[1:] for p in photos]
    factors = [jpeg_reduction("JPEG", w, h, config.preprocessing.resize_shorter) for w, h in sizes]
    print(f"{len(photos)} photos of the {args.split} split enlarged {args.scale:g}x: median "
          f"{int(np.median([w for w, _ in sizes]))}x{int(np.median([h for _, h in sizes]))}; "
          f"decoder scale 1/{int(np.median(factors))} (median)")  # fmt: skip
    first: np.ndarray | None = None
    for reduced in (False, True):
        spec = config.preprocessing.model_copy(update={"reduced_jpeg_decode": reduced})
        start = time.perf_counter()
        inputs = [load_and_preprocess(p, spec, 10**9) for p in photos]
        ms = 1000 * (time.perf_counter() - start) / len(photos)
        top1 = np.concatenate(
            [predictor.run(np.stack(inputs[i : i + 25])).argmax(1) for i in range(0, len(inputs), 25)]
        )
        correct = sum(int(c) == label for c, (_, label) in zip(top1, rows, strict=True))
        changed = "" if first is None else f", {int((first != top1).sum())} top-1 answers changed"
        print(f"{'reduced' if reduced else 'full   '} decode: {ms:5.1f} ms/image decode + preprocess, "
              f"top-1 {correct}/{len(rows)} = {100 * correct / len(rows):.1f}%{changed}")  # fmt: skip
        first = top1 if first is None else first
    return 0


if __name__ == "__main__":
    sys.exit(main())
