"""What the offline commands share: the ``--json`` output switch and how images are given."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pdserve.pipeline.dataset import Sample, read_folder, read_label_list, select
from pdserve.pipeline.errors import PipelineError


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else human)


def given_samples(args: argparse.Namespace) -> list[Sample]:
    if getattr(args, "label_list", None):
        samples = read_label_list(args.label_list, getattr(args, "data_root", None))
    elif getattr(args, "data_dir", None):
        samples = read_folder(args.data_dir)
    else:
        raise PipelineError("give --label-list FILE (lines 'path label') or --data-dir FOLDER")
    return select(samples, getattr(args, "limit", None))


def data_args(p: argparse.ArgumentParser, folder: bool = True) -> None:
    p.add_argument("--label-list", type=Path, help="file of 'image-path class-id' lines (val_list.txt format)")
    p.add_argument("--data-root", type=Path, help="folder the list's paths are relative to (default: the list's)")
    if folder:
        p.add_argument("--data-dir", type=Path, help="a folder of images (unlabelled)")
    p.add_argument("--limit", type=int, help="use only the first N images")
