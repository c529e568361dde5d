"""``pdserve collect-shapes``: record tensor shape ranges for tensorrt.shape_mode: tuned."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdserve.pipeline.commands.common import data_args, emit, given_samples

HELP = "record tensor shape ranges for tensorrt.shape_mode: tuned"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="a model folder; the file goes into its version folder")
    p.add_argument("--version", type=int, help="version folder (default: newest)")
    data_args(p)


def run(args: argparse.Namespace) -> None:
    from pdserve.pipeline.engines import collect_shapes
    from pdserve.pipeline.local import LocalModel

    result = collect_shapes(LocalModel.open(args.model, args.version), given_samples(args))
    found = result["input"]
    human = (
        f"collected {result['tensors']} tensor shape ranges on {result['device']} (input {found['name']}: "
        f"min {found['min']}, opt {found['opt']}, max {found['max']}) into {result['shape_file']}"
    )
    emit(args, result, human)
