"""What decides an INT8 model, given the FP32 model and the calibration images: the ``Recipe``, the
algorithms it may name, and reading one back from a file (JSON, a search report, an int8 config)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pdserve.pipeline.errors import PipelineError

DEFAULT_OP_TYPES = ("conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2")
# Thresholds computed from the shared statistics; the others need a calibration pass each.
SHARED_ALGOS = ("abs_max", "avg", "hist", "KL")
SAMPLING_ALGOS = ("mse", "emd", "ptf")
ALGOS = ("hist", "abs_max", "avg", "KL", "mse", "emd", "ptf")
# Activations that a bounded activation produces have a known range; calibration need not guess it.
BOUNDED_OUTPUTS = {"relu6": 6.0, "hard_sigmoid": 1.0, "sigmoid": 1.0}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides an INT8 model, given the FP32 model and the calibration images."""

    # The defaults are what the search chose for EfficientNet-Lite0 on the selection split
    # (BENCHMARKS.md): hist at Paddle's default percentile, batch norm folded first.
    algo: str = "hist"
    hist_percent: float = 0.99999  # for hist
    weight_quantize_type: str = "channel_wise_abs_max"
    round_type: str = "round"  # or adaround (learned rounding of weights, slow)
    fuse_bn: bool = True  # fold batch norm into convolutions before calibrating (optimize_model)
    batch_nums: int | None = None  # calibration batches to use; None: all
    # Outputs of relu6 & co. get their bound (6) as scale, not a calibrated one: KL otherwise clips
    # ReLU6 outputs at about 3.4 and EfficientNet-Lite0 loses 26 points (benchmarks/kl_diagnosis.py).
    bounded_scales: bool = True
    fp32_layers: tuple[str, ...] = ()  # weight names of layers kept in FP32

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise PipelineError(f"unknown algo {self.algo!r}; choose from {', '.join(ALGOS)}")
        if self.weight_quantize_type not in ("channel_wise_abs_max", "abs_max"):
            raise PipelineError(f"unknown weight_quantize_type {self.weight_quantize_type!r}")
        if self.round_type not in ("round", "adaround"):
            raise PipelineError(f"unknown round_type {self.round_type!r}")
        if not 0 < self.hist_percent <= 1:
            raise PipelineError(f"hist_percent must be in (0, 1], got {self.hist_percent}")

    @property
    def name(self) -> str:
        parts = [f"hist{self.hist_percent:g}" if self.algo == "hist" else self.algo]
        if self.weight_quantize_type == "abs_max":
            parts.append("w-tensor")
        if self.round_type == "adaround":
            parts.append("adaround")
        if self.fuse_bn:
            parts.append("fuse-bn")
        if self.batch_nums is not None:
            parts.append(f"{self.batch_nums}batches")
        if not self.bounded_scales:
            parts.append("unbounded")
        if self.fp32_layers:
            parts.append(f"fp32x{len(self.fp32_layers)}")
        return "+".join(parts)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["fp32_layers"] = list(self.fp32_layers)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Recipe:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(doc) - known
        if unknown:
            raise PipelineError(f"unknown recipe fields: {', '.join(sorted(unknown))}")
        return cls(**{**doc, "fp32_layers": tuple(doc.get("fp32_layers", ()))})

    def with_(self, **changes: Any) -> Recipe:
        return replace(self, **changes)


def read_recipe(path: Path) -> Recipe:
    """A recipe from JSON: a bare recipe, a search report (its chosen one), or a model's config record."""
    import yaml

    if not path.is_file():
        raise PipelineError(f"recipe file {path} not found")
    doc = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    if isinstance(doc, dict) and isinstance(doc.get("chosen"), dict):
        doc = doc["chosen"]
    if isinstance(doc, dict) and isinstance(doc.get("calibration"), dict):
        doc = doc["calibration"]
    if isinstance(doc, dict) and isinstance(doc.get("recipe"), dict):
        doc = doc["recipe"]
    if not isinstance(doc, dict):
        raise PipelineError(f"{path}: no recipe in it")
    return Recipe.from_dict(doc)
