"""Labelled images for the offline tools: ``path label`` lists, folders, and Paddle's binary layout.

The binary layout is that of Paddle's ImageNet tool (``full_ILSVRC2012_val_preprocess.py``):
an int64 image count N, then N float32 CHW images, then N int64 labels.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.errors import PdserveError
from pdserve.model_config import Preprocessing
from pdserve.pipeline.errors import PipelineError
from pdserve.preprocess import load_and_preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MAX_PIXELS = 10**9


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # -1 when unlabelled


def read_label_list(list_file: Path, root: Path | None = None) -> list[Sample]:
    """Read ``images/x.JPEG 12`` lines; paths are relative to ``root`` (default: the list's folder)."""
    if not list_file.is_file():
        raise PipelineError(f"label list {list_file} not found")
    base = root or list_file.parent
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise PipelineError(f"{list_file}:{number}: expected '<image path> <class id>', got {line!r}")
        samples.append(Sample(base / parts[0], int(parts[1])))
    if not samples:
        raise PipelineError(f"label list {list_file} has no entries")
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        raise PipelineError(f"{len(missing)} images of {list_file} not found, e.g. {missing[0]}")
    return samples


def read_folder(folder: Path) -> list[Sample]:
    """Every image directly in ``folder`` or below it, sorted, unlabelled."""
    if not folder.is_dir():
        raise PipelineError(f"image folder {folder} not found")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise PipelineError(f"no JPEG/PNG/WebP/BMP images in {folder}")
    return [Sample(p, -1) for p in paths]


def select(samples: list[Sample], limit: int | None) -> list[Sample]:
    return samples if limit is None else samples[:limit]


def load_images(samples: list[Sample], spec: Preprocessing, what: str = "preprocessing") -> np.ndarray:
    """Decode and preprocess every sample into one float32 NCHW array."""
    out = []
    with progress_bar(len(samples), what) as progress:
        for sample in samples:
            try:
                out.append(load_and_preprocess(sample.path.read_bytes(), spec, MAX_PIXELS))
            except PdserveError as exc:
                raise PipelineError(f"{sample.path}: {exc.message}") from None
            progress.update(1)
    return np.stack(out)


def write_binary(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    if len(images) != len(labels):
        raise ValueError("one label per image")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.array([len(images)], np.int64).tofile(f)
        np.ascontiguousarray(images, np.float32).tofile(f)
        np.asarray(labels, np.int64).tofile(f)


def read_binary(path: Path, chw: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Read the binary layout, checking its size against the expected image shape."""
    if not path.is_file():
        raise PipelineError(f"data file {path} not found")
    size = path.stat().st_size
    with path.open("rb") as f:
        count = int(np.fromfile(f, np.int64, 1)[0])
        per_image = int(np.prod(chw))
        expected = 8 + count * per_image * 4 + count * 8
        if count <= 0 or size != expected:
            raise PipelineError(
                f"{path}: {size} bytes, but {count} images of shape {chw} need {expected}; "
                "was it written with another --data-dim?"
            )
        images = np.fromfile(f, np.float32, count * per_image).reshape(count, *chw)
        labels = np.fromfile(f, np.int64, count)
    return images, labels


def progress_bar(total: int, what: str) -> Any:
    """A tqdm bar on stderr with rate and ETA; silent when stderr is not a terminal (PDSERVE_PROGRESS=1 forces it).

    It never writes to stdout, so ``--json`` output stays clean.
    """
    import os

    from tqdm import tqdm

    forced = os.environ.get("PDSERVE_PROGRESS") == "1"
    return tqdm(
        total=total, desc=what, file=sys.stderr, disable=False if forced else None, leave=False, dynamic_ncols=True
    )


def batches(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), size):
        yield array[start : start + size]
