"""A plain FastAPI route, no batching: the body is decoded and predicted per request, in the threadpool."""

from __future__ import annotations

import threading

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from peers.common import Classifier, arguments

args = arguments(__doc__ or "")
classifier = Classifier(args.model_dir, args.threads)
lock = threading.Lock()  # one predictor: runs one request at a time
app = FastAPI()


def _classify(body: bytes) -> dict[str, object]:
    image = classifier.decode(body)
    with lock:
        classes, scores = classifier.top5([image])
    return {
        "predictions": [{"class_id": int(c), "score": float(s)} for c, s in zip(classes[0], scores[0], strict=True)]
    }


@app.post("/predict")
async def predict(request: Request) -> dict[str, object]:
    return await run_in_threadpool(_classify, await request.body())


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
