"""``pdserve preprocess``: turn labelled images into Paddle's binary ImageNet layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdserve.pipeline.commands.common import emit
from pdserve.pipeline.dataset import read_label_list, select
from pdserve.pipeline.errors import PipelineError

HELP = "turn labelled images into Paddle's binary ImageNet layout"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="model folder whose preprocessing to apply")
    p.add_argument("--data-dir", type=Path, required=True, help="folder the label list's paths are relative to")
    p.add_argument("--label-list", type=Path, required=True)
    p.add_argument("--output-file", type=Path, required=True)
    p.add_argument("--data-dim", type=int, help="image side; must match the model's input")
    p.add_argument("--limit", type=int)


def run(args: argparse.Namespace) -> None:
    import numpy as np

    from pdserve.pipeline.dataset import load_images, write_binary
    from pdserve.pipeline.local import LocalModel

    model = LocalModel.open(args.model)
    spec = model.config.preprocessing
    if args.data_dim is not None and args.data_dim != spec.crop:
        raise PipelineError(f"--data-dim {args.data_dim} differs from the model's input size {spec.crop}")
    samples = select(read_label_list(args.label_list, args.data_dir), args.limit)
    images = load_images(samples, spec)
    write_binary(args.output_file, images, np.array([s.label for s in samples]))
    result = {"output_file": str(args.output_file), "images": len(samples), "shape": list(images.shape[1:])}
    emit(args, result, f"wrote {len(samples)} images {list(images.shape[1:])} to {args.output_file}")
