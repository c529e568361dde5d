"""The null model as a LitServe API, at module level so that LitServe's spawned worker can import it
(``benchmarks/peers/null_peers.py litserve``)."""

from __future__ import annotations

import base64
from typing import Any

import cv2
import litserve as ls
import numpy as np

from peers.null_peers import null


class NullAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        pass

    # No annotation on ``request``: LitServe reads the type of the body from it (unannotated: JSON).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        image = cv2.imdecode(np.frombuffer(base64.b64decode(request["image"]), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        return image.transpose(2, 0, 1).astype(np.float32)

    def batch(self, inputs: list[Any]) -> Any:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return null(x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        top = int(output.argmax())
        return {"predictions": [{"class_id": top, "score": float(output[top])}]}
