"""``pdserve evaluate``: top-1/top-5 and throughput of models side by side, with top-1 agreement."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.pipeline.dataset import Sample, load_images, read_binary
from pdserve.pipeline.errors import PipelineError
from pdserve.pipeline.local import LocalModel, predict_timed


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
    gained: int | None = None  # images the first model got wrong and this one right (top-1)
    lost: int | None = None  # images the first model got right and this one wrong
    calibration_overlap: int = 0  # evaluation images that calibrated this model

    def drop_points(self, baseline: Evaluation) -> float:
        return (baseline.top1 - self.top1) * 100


@dataclass(frozen=True)
class Scores:
    """Top-1/top-5 of one model's outputs, paired with a reference model's top-1 when given."""

    top1: float
    top5: float
    predicted: np.ndarray  # top-1 class per image
    agreement: float | None = None
    gained: int | None = None  # reference wrong, this right
    lost: int | None = None  # reference right, this wrong


def score(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray | None = None) -> Scores:
    """Score ``probs`` against ``labels``; ``reference`` is another model's top-1 per image."""
    top5 = np.argsort(-probs, axis=1)[:, :5]
    top1 = top5[:, 0]
    right = top1 == labels
    paired: dict[str, Any] = {}
    if reference is not None:
        ref_right = reference == labels
        paired = {
            "agreement": float((top1 == reference).mean()),
            "gained": int((right & ~ref_right).sum()),
            "lost": int((ref_right & ~right).sum()),
        }
    return Scores(float(right.mean()), float((top5 == labels[:, None]).any(axis=1).mean()), top1, **paired)


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
    first: np.ndarray | None = None  # the first model's top-1, which the others are paired with
    for model in models:
        if data_file is None:
            assert samples is not None
            key = model.config.preprocessing.model_dump_json()
            if key not in cache:
                cache[key] = load_images(samples, model.config.preprocessing)
            images = cache[key]
        probs, rate = predict_timed(model, images, batch_size)
        scores = score(probs, labels, first)
        if first is None:
            first = scores.predicted
        results.append(
            Evaluation(
                model=model.name,
                version=model.version,
                precision=model.config.precision,
                images=len(labels),
                top1=scores.top1,
                top5=scores.top5,
                images_per_s=rate,
                agreement=scores.agreement,
                gained=scores.gained,
                lost=scores.lost,
                calibration_overlap=len(calibration_overlap(model, samples)) if samples is not None else 0,
            )
        )
    return results


def calibration_images(model: LocalModel) -> set[str]:
    """File names of the images that calibrated a quantized model (empty if unknown or not quantized)."""
    record = model.config.calibration or {}
    listed = model.path / str(record.get("image_list", "calibration_images.txt"))
    if listed.is_file():
        return {line.split()[0].rsplit("/", 1)[-1] for line in listed.read_text().splitlines() if line.strip()}
    source = Path(str(record.get("source", "")))
    if record and source.is_file():  # older models: the list they were calibrated from
        lines = [line for line in source.read_text().splitlines() if line.strip()][: int(record.get("images", 0))]
        return {line.split()[0].rsplit("/", 1)[-1] for line in lines}
    return set()


def calibration_overlap(model: LocalModel, samples: list[Sample]) -> list[str]:
    used = calibration_images(model)
    return [s.path.name for s in samples if s.path.name in used]


def check_calibration_overlap(models: list[LocalModel], samples: list[Sample], strict: bool) -> list[str]:
    """Warnings (or, strict, an error) for evaluation images that calibrated a model."""
    warnings = []
    for model in models:
        overlap = calibration_overlap(model, samples)
        if overlap:
            warnings.append(overlap_warning(len(overlap), len(samples), model.name, overlap[0]))
    if warnings and strict:
        raise PipelineError(warnings[0] + " (--strict)")
    return warnings


def overlap_warning(count: int, total: int, what: str, example: str) -> str:
    return (
        f"{count} of {total} evaluation images calibrated {what} (e.g. {example}): "
        "accuracy on them is not a measurement; evaluate on images kept apart (data/imagenet-sample-report.txt)"
    )


def format_table(results: list[Evaluation]) -> str:
    head = ("model", "ver", "prec", "images", "top-1", "top-5", "img/s", "agree", "+/-")
    lines = [f"{head[0]:<32} " + " ".join(f"{h:>7}" for h in head[1:])]
    for r in results:
        agree = "-" if r.agreement is None else f"{r.agreement:.1%}"
        flips = "-" if r.gained is None else f"+{r.gained}/-{r.lost}"
        lines.append(
            f"{r.model:<32} {r.version:>7} {r.precision:>7} {r.images:>7} {r.top1:>7.1%} {r.top5:>7.1%}"
            f" {r.images_per_s:>7.1f} {agree:>7} {flips:>7}"
        )
    lines.append("+/-: images the first model got wrong and this one right / right and this one wrong (top-1)")
    return "\n".join(lines)


def as_json(results: list[Evaluation]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
