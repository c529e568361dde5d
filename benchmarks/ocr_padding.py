"""How PP-OCRv4's recogniser reads a line padded to different widths (issue 21, ``ocr.rec_padding``).

The reference pipeline (rapidocr-paddle, in-process) reads every page of the e2e test; its own
crops are then read again one at a time through its own predictor, each padded to: the width the
reference padded it to (its group of 6 from one image, never below 320), that width rounded up or
down to a multiple of 8, 16, 32 and 64, the line's own width, at least 320, and pdserve's width
buckets. Prints how many lines each reads exactly as the reference did.

    .venv/bin/python benchmarks/ocr_padding.py
"""

from __future__ import annotations

import math
import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / ".venv" / "ocr-reference"))

from pdserve.kinds.ocr_geometry import paddleocr_widths  # noqa: E402
from pdserve.model_config import Ocr  # noqa: E402
from pdserve.pipeline.bench import cpu_name  # noqa: E402
from pdserve.pipeline.text_images import CASES, MORE_CASES, render  # noqa: E402


def main() -> None:
    from rapidocr_paddle import RapidOCR
    from rapidocr_paddle.ch_ppocr_rec.text_recognize import TextRecognizer

    captured: list[tuple[Any, str, int]] = []  # (crop, the reference's text, the width it padded to)
    original = TextRecognizer.__call__

    def recording(self: Any, img_list: Any, return_word_box: bool = False) -> Any:
        found, elapsed = original(self, img_list, return_word_box)
        crops = img_list if isinstance(img_list, list) else [img_list]
        widths = paddleocr_widths(crops, 48, 320, self.rec_batch_num)
        captured.extend((crop, text[0], width) for crop, text, width in zip(crops, found, widths, strict=True))
        return found, elapsed

    TextRecognizer.__call__ = recording
    engine = RapidOCR(Global={"print_verbose": False})
    for lines, size, angle in [*CASES, *MORE_CASES]:
        engine(cv2.imdecode(np.frombuffer(render(lines, size, angle), np.uint8), cv2.IMREAD_COLOR))
    rec = engine.text_rec

    def read(crop: Any, width: int) -> str:
        x = rec.resize_norm_img(crop, width / 48)[None]
        return str(rec.postprocess_op(rec.session(x)[0])[0][0]).strip()

    buckets = Ocr().rec_widths
    equal: Counter[str] = Counter()
    for crop, text, padded in captured:
        own = math.ceil(48 * crop.shape[1] / crop.shape[0])
        widths = {
            "the reference's width, alone": padded,
            "own width": own,
            "at least 320": max(320, own),
            "pdserve's buckets": next((b for b in buckets if b >= own), buckets[-1]),
        }
        for k in (8, 16, 32, 64):
            widths[f"rounded up to {k}"] = math.ceil(padded / k) * k
            widths[f"rounded down to {k}"] = max(own, padded // k * k)
        for name, width in widths.items():
            equal[name] += read(crop, width) == text.strip()
    print(f"CPU: {cpu_name()} ({platform.machine()}); {len(captured)} lines")
    for name, count in equal.items():
        print(f"{name}: {count}/{len(captured)} equal to the reference's text")


if __name__ == "__main__":
    main()
