"""A model version loaded in this process for the offline tools (evaluate, quantize, bench, tune...)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdserve.model_config import ModelConfig, load_model_config, version_folders
from pdserve.pipeline.dataset import batches, progress_bar
from pdserve.pipeline.errors import PipelineError
from pdserve.runtime.predictor_config import LoadedPredictor


@dataclass(frozen=True)
class LocalModel:
    """A model folder of the repository, opened for offline use (no server)."""

    name: str
    path: Path
    version: int
    config: ModelConfig

    @classmethod
    def open(cls, path: Path, version: int | None = None, cpu_threads: int | None = None) -> LocalModel:
        if not path.is_dir():
            raise PipelineError(f"model folder {path} not found")
        config = load_model_config(path)
        if cpu_threads is not None:
            config = config.model_copy(update={"cpu_threads": cpu_threads})
        found = sorted(version_folders(path))
        if not found:
            raise PipelineError(f"{path} has no version folder")
        chosen = version or found[-1]
        if chosen not in found:
            raise PipelineError(f"{path} has no version {chosen}; it has {found}")
        return cls(path.name, path, chosen, config)

    @property
    def version_dir(self) -> Path:
        return self.path / str(self.version)

    def predictor(self) -> LoadedPredictor:
        return LoadedPredictor(self.config, self.version_dir, self.name)


def predict_timed(model: LocalModel, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Outputs for ``images`` at ``batch_size``, and images/s of ``predictor.run()`` alone (after a warm-up)."""
    predictor = model.predictor()
    predictor.run(images[:batch_size])  # warm-up
    outputs, seconds = [], 0.0
    with progress_bar(len(images), f"evaluating {model.name}") as progress:
        for batch in batches(images, batch_size):
            start = time.perf_counter()
            outputs.append(predictor.run(batch))
            seconds += time.perf_counter() - start
            progress.update(len(batch))
    return np.concatenate(outputs), len(images) / seconds
