"""``pdserve tune``: measure serving configurations on this machine and write the best into config.yaml."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdserve.pipeline.commands.common import data_args, emit, given_samples
from pdserve.pipeline.errors import GateFailed, PipelineError

HELP = "measure serving configurations on this machine and write the best into config.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model name in --model-repo, or a model folder")
    p.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    data_args(p)
    p.add_argument("--goal", choices=["throughput", "latency"], default="throughput")
    p.add_argument("--p99-ms", type=float, help="throughput goal: only configurations whose p99 stays under this")
    p.add_argument("--clients", type=int, default=16, help="closed-loop clients for the throughput goal")
    p.add_argument("--seconds", type=float, default=10.0, help="load per candidate")
    p.add_argument("--layouts", nargs="+", help="instances x threads to try, e.g. 1x2 2x1 (default: every split)")
    p.add_argument(
        "--engines",
        nargs="+",
        choices=["onednn", "openvino", "onnxruntime"],
        help="default: each this model can run (onnxruntime where the version has model.onnx)",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", help="max_batch_size values (default: 1 4 8 16)")
    p.add_argument("--delays-ms", type=float, nargs="+", help="max_queue_delay_ms values (default: 0 2 5)")
    p.add_argument("--cores", type=int, help="cores to plan for (default: those this process may use)")
    p.add_argument("--write", action="store_true", help="write the best into the model's config.yaml")
    p.add_argument("--report", type=Path, help="also write the full report as JSON here")


def run(args: argparse.Namespace) -> None:
    from pdserve.pipeline.tune import TuneOptions, Tuner, dump, format_tune_report, model_folder

    folder = model_folder(args.model_repo, args.model)
    jpegs = [sample.path.read_bytes() for sample in given_samples(args)]
    options = TuneOptions(goal=args.goal, p99_ms=args.p99_ms, clients=args.clients, seconds=args.seconds)
    if args.layouts:
        try:
            options.layouts = [(int(i), int(t)) for i, t in (v.split("x") for v in args.layouts)]
        except ValueError:
            raise PipelineError("--layouts takes INSTANCESxTHREADS values, e.g. 1x2 2x1") from None
    for name in ("engines", "batch_sizes", "delays_ms", "cores"):
        if getattr(args, name):
            setattr(options, name, getattr(args, name))
    tuner = Tuner(folder, jpegs, options, log=lambda line: print(line, file=sys.stderr, flush=True))
    best = tuner.search()
    report = tuner.report()
    human = format_tune_report(report)
    if best is not None and args.write:
        human += f"\nwritten to {tuner.write(best)}"
    if args.report:
        args.report.write_text(dump(report))
    emit(args, report, human)
    if best is None or not report["met"]:
        raise GateFailed("no candidate met the goal" if best else "no candidate loaded and answered correctly")
