"""What every peer server shares with pdserve: the model files, the predictor setup and the preprocessing.

A peer classifies JPEG bytes with the shipped model's config (``model_repo/<name>/config.yaml``):
``pdserve.preprocess.load_and_crop`` per image, ``pdserve.preprocess.Normalizer`` per batch and
``pdserve.runtime.predictor_config.LoadedPredictor``: the same code pdserve runs (its HTTP process crops,
its workers normalise and predict), so that the servers differ only in how they serve.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pdserve.model_config import ModelConfig, load_model_config, version_folders  # noqa: E402
from pdserve.preprocess import Normalizer, load_and_crop  # noqa: E402

MAX_PIXELS = 40_000_000


class Classifier:
    """One predictor for one model folder, with ``threads`` math threads."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        from pdserve.runtime.predictor_config import LoadedPredictor

        config = load_model_config(model_dir).model_copy(update={"cpu_threads": threads})
        version = max(version_folders(model_dir))
        self.config: ModelConfig = config
        self.predictor = LoadedPredictor(config, model_dir / str(version), model_dir.name)
        self.normalize = Normalizer(config.preprocessing)
        self.predictor.run(np.zeros((1, *config.input.shape), np.float32))  # warm-up

    def decode(self, data: bytes) -> np.ndarray:
        """JPEG bytes to a uint8 crop."""
        return load_and_crop(data, self.config.preprocessing, MAX_PIXELS)

    def top5(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        probs = self.predictor.run(self.normalize(np.stack(images)))
        classes = np.argsort(-probs, axis=1)[:, :5]
        return classes, np.take_along_axis(probs, classes, axis=1)

    def answer(self, data_list: list[bytes]) -> list[dict[str, Any]]:
        classes, scores = self.top5([self.decode(d) for d in data_list])
        return [
            {"predictions": [{"class_id": int(c), "score": float(s)} for c, s in zip(cs, ss, strict=True)]}
            for cs, ss in zip(classes, scores, strict=True)
        ]


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "model_repo" / "efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=0.0)
    return parser.parse_args()
