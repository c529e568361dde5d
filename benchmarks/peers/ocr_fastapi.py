"""The OCR reference pipeline (rapidocr-paddle, around the same published PP-OCRv4 files) behind a plain
FastAPI route that runs one request at a time, as PaddleX's basic serving does (its pipeline behind a
lock: PaddleX #2279, #3956). Run with the reference on the path: ``.venv/ocr-reference``."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--reference", type=Path, required=True, help="the folder rapidocr_paddle is installed in")
args = parser.parse_args()
sys.path.insert(0, str(args.reference))
from rapidocr_paddle import RapidOCR  # noqa: E402

engine = RapidOCR(Global={"print_verbose": False})
lock = threading.Lock()
app = FastAPI()


def _ocr(body: bytes) -> dict[str, object]:
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    with lock:
        result, _ = engine(image)
    lines = [{"text": text, "score": float(score), "box": box} for box, text, score in result or []]
    return {"lines": lines}


@app.post("/ocr")
async def ocr(request: Request) -> dict[str, object]:
    return await run_in_threadpool(_ocr, await request.body())


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
