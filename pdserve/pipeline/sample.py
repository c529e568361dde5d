"""The ImageNet sample the project measures on (``../shared/data/imagenet-sample`` beside a checkout,
or ``PDSERVE_SAMPLE_DATA``) and its committed disjoint splits (``data/imagenet-sample-*.txt``):
for tests, benchmarks and maintenance scripts alike."""

from __future__ import annotations

import os
from pathlib import Path

from pdserve.pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[2]  # the checkout
MODEL_REPO = ROOT / "model_repo"
DEFAULT_MODEL = "efficientnet_lite0"
SPLITS = ("calibration", "selection", "report")


class SampleMissing(PipelineError):
    """The ImageNet sample is not where it is looked for."""


def sample_dir() -> Path:
    path = Path(os.environ.get("PDSERVE_SAMPLE_DATA", ROOT.parent / "shared" / "data" / "imagenet-sample"))
    if not (path / "val_list.txt").is_file():
        raise SampleMissing(f"ImageNet sample not found at {path} (set PDSERVE_SAMPLE_DATA)")
    return path


def _rows(list_file: Path, root: Path) -> list[tuple[Path, int]]:
    rows = []
    for line in list_file.read_text().splitlines():
        if line.strip():
            rel, label = line.split()
            rows.append((root / rel, int(label)))
    return rows


def sample_list(limit: int | None = None) -> list[tuple[Path, int]]:
    """Every image of the sample with its class, in ``val_list.txt`` order (the first ``limit``)."""
    root = sample_dir()
    return _rows(root / "val_list.txt", root)[:limit]


def sample_split(name: str) -> list[tuple[Path, int]]:
    """One of the committed disjoint lists: calibration, selection or report."""
    if name not in SPLITS:
        raise ValueError(f"split {name!r}: one of {SPLITS}")
    return _rows(ROOT / "data" / f"imagenet-sample-{name}.txt", sample_dir())
