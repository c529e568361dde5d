"""LitServe with batching on; decoding and prediction in LitServe's worker process.

LitServe reads a request body as JSON (or a form) in its HTTP process and hands the parsed payload
to the worker over a queue, so the JPEG travels as base64 in ``{"image": ...}``, its documented way.
"""

from __future__ import annotations

import base64
from typing import Any

import litserve as ls

from peers.common import Classifier, arguments

args = arguments(__doc__ or "")


class ClassifierAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.classifier = Classifier(args.model_dir, args.threads)

    # No annotation on ``request``: LitServe reads the type of the body from it (unannotated: JSON).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return self.classifier.decode(base64.b64decode(request["image"]))

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, images: list[Any]) -> list[dict[str, Any]]:
        classes, scores = self.classifier.top5(images)
        return [
            {"predictions": [{"class_id": int(c), "score": float(s)} for c, s in zip(cs, ss, strict=True)]}
            for cs, ss in zip(classes, scores, strict=True)
        ]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


if __name__ == "__main__":
    api = ClassifierAPI(max_batch_size=args.max_batch_size, batch_timeout=args.max_delay_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
