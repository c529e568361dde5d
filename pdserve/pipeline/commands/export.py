"""``pdserve export``: export a Paddle model into a model-repository folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdserve.pipeline.commands.common import emit

HELP = "export a Paddle model into a model-repository folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pdserve.pipeline.export import ARCHITECTURES

    p.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    p.add_argument("--output", type=Path, required=True, help="model folder, e.g. model_repo/resnet50")
    p.add_argument("--weights", type=Path, help="trained weights (.pdparams); without them weights are random")
    p.add_argument("--pretrained", action="store_true", help="efficientnet_lite0: import the pretrained weights")
    p.add_argument("--labels", type=Path, help="class names, one a line, copied into the model folder")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--version", type=int, help="version folder to write (default: the next number)")
    p.add_argument("--no-softmax", action="store_true", help="do not append a softmax")


def run(args: argparse.Namespace) -> None:
    from pdserve.pipeline.export import export_model

    result = export_model(
        args.arch,
        args.output,
        weights=args.weights,
        pretrained=args.pretrained,
        softmax=not args.no_softmax,
        num_classes=args.num_classes,
        labels=args.labels,
        version=args.version,
    )
    note = " (RANDOM weights)" if result["random_weights"] else ""
    emit(args, result, f"exported {args.arch}{note} to {result['model_dir']}/{result['version']}")
