"""Split the ImageNet sample into three disjoint lists, committed under data/:

- calibration (``imagenet-sample-calibration.txt``, 200 images, as before: the shipped INT8 model
  was calibrated on them): only for calibration;
- selection (``imagenet-sample-selection.txt``): for choosing a recipe;
- report (``imagenet-sample-report.txt``): only for the numbers that are published.

The 300 images outside calibration are shuffled with a fixed seed and halved. Accuracy measured on
calibration images is not a measurement; a recipe chosen on the report split makes its number a
selection, not a measurement.

    .venv/bin/python scripts/split_sample.py [--sample ../shared/data/imagenet-sample]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SEED = 20261122


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=ROOT.parent / "shared" / "data" / "imagenet-sample")
    args = parser.parse_args()
    lines = [line for line in (args.sample / "val_list.txt").read_text().splitlines() if line.strip()]
    calibration = set((DATA / "imagenet-sample-calibration.txt").read_text().splitlines())
    rest = [line for line in lines if line not in calibration]
    random.Random(SEED).shuffle(rest)
    half = len(rest) // 2
    for name, part in (("selection", rest[:half]), ("report", rest[half:])):
        (DATA / f"imagenet-sample-{name}.txt").write_text("\n".join(sorted(part)) + "\n")
        print(f"data/imagenet-sample-{name}.txt: {len(part)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
