"""``pdserve evaluate``: top-1/top-5 and throughput of models side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdserve.pipeline.commands.common import data_args, emit, given_samples
from pdserve.pipeline.errors import GateFailed, PipelineError

HELP = "top-1/top-5 and throughput of models side by side"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, nargs="+", required=True, help="model folders; the first is the reference")
    p.add_argument("--baseline", type=Path, help="the reference model (e.g. FP32), evaluated first")
    p.add_argument(
        "--max-drop",
        type=float,
        help="fail (exit 1) when a model's top-1 is more than this many points below the baseline's",
    )
    p.add_argument("--strict", action="store_true", help="refuse (exit 2) when evaluation images calibrated a model")
    data_args(p, folder=False)
    p.add_argument("--data-file", type=Path, help="a binary file from 'pdserve preprocess' instead of images")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="cpu_math_library_num_threads (default: the model's)")


def run(args: argparse.Namespace) -> None:
    from pdserve.pipeline.evaluate import as_json, check_calibration_overlap, evaluate, format_table
    from pdserve.pipeline.local import LocalModel

    paths = ([args.baseline] if args.baseline else []) + list(args.models)
    models = [LocalModel.open(p, cpu_threads=args.threads) for p in paths]
    if args.max_drop is not None and len(models) < 2:
        raise PipelineError("--max-drop compares models with a baseline: give --baseline and --models")
    if args.data_file:
        results = evaluate(models, data_file=args.data_file, batch_size=args.batch_size)
    else:
        samples = given_samples(args)
        for warning in check_calibration_overlap(models, samples, args.strict):
            print(f"pdserve evaluate: WARNING: {warning}", file=sys.stderr)
        results = evaluate(models, samples=samples, batch_size=args.batch_size)
    emit(args, as_json(results), format_table(results))
    if args.max_drop is not None:
        base = results[0]
        for r in results[1:]:
            drop = r.drop_points(base)
            if drop > args.max_drop:
                raise GateFailed(
                    f"{r.model} top-1 {r.top1:.1%} is {drop:.1f} points below {base.model} ({base.top1:.1%}) on "
                    f"{r.images} images (+{r.gained}/-{r.lost} flips); --max-drop {args.max_drop:g}"
                )
