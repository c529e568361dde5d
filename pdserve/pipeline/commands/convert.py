"""``pdserve convert``: write model.onnx into a version folder (paddle2onnx), kept if it matches Paddle."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdserve.pipeline.commands.common import data_args, emit, given_samples

HELP = "write model.onnx into a version folder (paddle2onnx), kept if it matches Paddle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="a model folder, e.g. model_repo/efficientnet_lite0")
    p.add_argument("--version", type=int, help="version folder (default: newest)")
    data_args(p)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest output difference from Paddle to keep an FP32 model"
    )
    p.add_argument("--force", action="store_true", help="replace an existing model.onnx")
    p.add_argument(
        "--int8-output",
        type=Path,
        help="instead: quantize the version's model.onnx (ONNX Runtime QDQ, calibrated on the given images) into "
        "this new model folder",
    )
    p.add_argument("--calibration-method", choices=["MinMax", "Percentile", "Entropy"], default="Percentile")


def run(args: argparse.Namespace) -> None:
    from pdserve.pipeline.convert import convert_model, format_convert_report, quantize_onnx

    if args.int8_output:
        made = quantize_onnx(args.model, args.int8_output, given_samples(args), method=args.calibration_method)
        emit(args, made, f"wrote {made['onnx_file']} ({made['algo']}, {made['images']} images, {made['seconds']} s)")
        return
    result = convert_model(
        args.model,
        given_samples(args),
        version=args.version,
        opset=args.opset,
        tolerance=args.tolerance,
        force=args.force,
    )
    emit(args, result, format_convert_report(result))
