"""``pdserve bench``: in-process latency and throughput with a full inference report."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdserve.pipeline.commands.common import data_args, emit, given_samples

HELP = "in-process latency and throughput with a full inference report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, nargs="+", required=True, help="model folders; ratios are to the first")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, help="cpu_math_library_num_threads (default: the model's)")
    data_args(p)


def run(args: argparse.Namespace) -> None:
    from pdserve.pipeline.bench import bench_model, format_bench_report
    from pdserve.pipeline.local import LocalModel

    samples = given_samples(args) if (args.label_list or args.data_dir) else []
    reports = []
    for path in args.models:
        model = LocalModel.open(path, cpu_threads=args.threads)
        reports += bench_model(model, args.batch_sizes, args.iterations, args.warmup, samples)
    human = format_bench_report(reports)
    if len(args.models) > 1:
        base = {r["data"]["batch_size"]: r["performance"]["images_per_s"] for r in reports[: len(args.batch_sizes)]}
        for r in reports[len(args.batch_sizes) :]:
            ratio = r["performance"]["images_per_s"] / base[r["data"]["batch_size"]]
            human += (
                f"\n{r['model']['name']} at batch {r['data']['batch_size']}: {ratio:.2f}x the images/s of the first"
            )
    emit(args, reports, human)
