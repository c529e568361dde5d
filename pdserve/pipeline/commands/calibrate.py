"""``pdserve calibrate``: TensorRT INT8 calibration on a GPU (use_calib_mode)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdserve.pipeline.commands.common import data_args, emit, given_samples

HELP = "TensorRT INT8 calibration on a GPU (use_calib_mode)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True)
    data_args(p)
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, help="where TensorRT keeps engines and the table")


def run(args: argparse.Namespace) -> None:
    from pdserve.pipeline.calibrate import calibrate, require_cuda

    require_cuda()  # before reading any image
    result = calibrate(args.model, given_samples(args), gpu=args.gpu, cache_dir=args.cache_dir)
    emit(args, result, f"calibrated {args.model} on {result['images']} images; table in {result['cache_dir']}")
