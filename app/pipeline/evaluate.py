"""``pdserve evaluate``: top-1/top-5 and throughput of models side by side, with top-1 agreement."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.model_config import ModelConfig, load_model_config, version_folders
from app.pipeline.dataset import PipelineError, Progress, Sample, batches, load_images, read_binary
from app.runtime.predictor_config import LoadedPredictor


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


@dataclass
class Evaluation:
    model: str
    version: int
    precision: str
    images: int
    top1: float
    top5: float
    images_per_s: float  # predictor.run() only, at the evaluation batch size
    agreement: float | None  # top-1 agreement with the first model


def _run(model: LocalModel, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    predictor = model.predictor()
    predictor.run(images[:batch_size])  # warm-up
    outputs, seconds = [], 0.0
    with Progress(len(images), f"evaluating {model.name}") as progress:
        for batch in batches(images, batch_size):
            start = time.perf_counter()
            outputs.append(predictor.run(batch))
            seconds += time.perf_counter() - start
            progress.advance(len(batch))
    return np.concatenate(outputs), len(images) / seconds


def evaluate(
    models: list[LocalModel],
    samples: list[Sample] | None = None,
    data_file: Path | None = None,
    batch_size: int = 8,
) -> list[Evaluation]:
    """Evaluate every model on the same images; inputs are preprocessed once per distinct preprocessing."""
    if not models:
        raise PipelineError("name at least one model")
    cache: dict[str, np.ndarray] = {}
    labels: np.ndarray
    if data_file is not None:
        shape = models[0].config.input.shape
        if any(m.config.input.shape != shape for m in models):
            raise PipelineError("a binary data file needs models with the same input shape")
        images, labels = read_binary(data_file, shape)
    elif samples is not None:
        labels = np.array([s.label for s in samples])
    else:
        raise PipelineError("give a label list or a data file")
    if (labels < 0).any():
        raise PipelineError("evaluation needs labelled images (a 'path label' list)")

    results: list[Evaluation] = []
    first_top1: np.ndarray | None = None
    for model in models:
        if data_file is None:
            assert samples is not None
            key = model.config.preprocessing.model_dump_json()
            if key not in cache:
                cache[key] = load_images(samples, model.config.preprocessing)
            images = cache[key]
        probs, rate = _run(model, images, batch_size)
        top5 = np.argsort(-probs, axis=1)[:, :5]
        top1 = top5[:, 0]
        agreement = None if first_top1 is None else float((top1 == first_top1).mean())
        if first_top1 is None:
            first_top1 = top1
        results.append(
            Evaluation(
                model=model.name,
                version=model.version,
                precision=model.config.precision,
                images=len(labels),
                top1=float((top1 == labels).mean()),
                top5=float((top5 == labels[:, None]).any(axis=1).mean()),
                images_per_s=rate,
                agreement=agreement,
            )
        )
    return results


def format_table(results: list[Evaluation]) -> str:
    lines = [f"{'model':<32} {'ver':>3} {'prec':>5} {'images':>6} {'top-1':>7} {'top-5':>7} {'img/s':>7} {'agree':>7}"]
    for r in results:
        agree = "-" if r.agreement is None else f"{r.agreement:.1%}"
        lines.append(
            f"{r.model:<32} {r.version:>3} {r.precision:>5} {r.images:>6} {r.top1:>7.1%} {r.top5:>7.1%}"
            f" {r.images_per_s:>7.1f} {agree:>7}"
        )
    return "\n".join(lines)


def as_json(results: list[Evaluation]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
