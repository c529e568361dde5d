"""Why KL calibration collapses on EfficientNet-Lite0: its thresholds against abs_max's, and ablations.

Collects the calibration statistics once (the 200 images of data/imagenet-sample-calibration.txt),
prints the ratio of KL's to abs_max's activation threshold per kind of tensor (grouped by the op
that writes it), then builds KL models with one group of tensors given another threshold and
evaluates each on the selection split against FP32, paired. Needs FLAGS_enable_pir_api=0 (set here).

    .venv/bin/python benchmarks/kl_diagnosis.py [--split selection] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("FLAGS_enable_pir_api", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pdserve.pipeline.dataset import read_label_list  # noqa: E402
from pdserve.pipeline.local import LocalModel  # noqa: E402
from pdserve.pipeline.quantization.calibration import thresholds  # noqa: E402
from pdserve.pipeline.quantization.recipe import BOUNDED_OUTPUTS, Recipe  # noqa: E402
from pdserve.pipeline.quantization.search import Search, quiet_paddle  # noqa: E402
from pdserve.pipeline.sample import sample_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=["selection", "report"], default="selection")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pdserve" / "calibration")
    args = parser.parse_args()
    calibration = read_label_list(ROOT / "data" / "imagenet-sample-calibration.txt", sample_dir())
    evaluation = read_label_list(ROOT / "data" / f"imagenet-sample-{args.split}.txt", sample_dir())
    fp32 = LocalModel.open(ROOT / "model_repo" / "efficientnet_lite0")
    with quiet_paddle():
        search = Search(fp32, calibration, evaluation, target_drop=0.0, cache_dir=args.cache_dir, log=lambda _: None)
        try:
            stats = search.statistics(Recipe(algo="KL"))
            print(f"calibration statistics: {stats.batches} batches of {search.batch_size}", flush=True)
            kl = thresholds(stats, Recipe(algo="KL", bounded_scales=False))
            absmax = thresholds(stats, Recipe(algo="abs_max", bounded_scales=False))
            groups: dict[str, list[str]] = defaultdict(list)
            for name in kl:
                groups[stats.producers.get(name, "?")].append(name)
            first_input = next(layer.input for layer in stats.layers)
            classifier_input = stats.layers[-1].input
            print("KL threshold / abs_max threshold, per producer of the tensor:")
            print(f"{'written by':<26} {'tensors':>7} {'median':>7} {'min':>7} {'max':>7}")
            for producer, names in sorted(groups.items()):
                ratio = np.array([kl[n] / absmax[n] for n in names])
                print(
                    f"{producer:<26} {len(names):>7} {np.median(ratio):>7.2f} {ratio.min():>7.2f} {ratio.max():>7.2f}"
                )
            for name, what in ((first_input, "first conv input"), (classifier_input, "classifier input")):
                print(f"{what} ({name}): KL {kl[name]:.3f}, abs_max {absmax[name]:.3f}")
            raw = Recipe(algo="KL", bounded_scales=False)
            relu6 = [n for n in kl if stats.producers.get(n) in BOUNDED_OUTPUTS]
            others = [n for n in kl if n not in relu6]
            ablations = {
                "abs_max": (raw.with_(algo="abs_max"), {}),
                "KL (Paddle's)": (raw, {}),
                "KL, relu6 outputs at abs_max": (raw, {n: absmax[n] for n in relu6}),
                "KL, relu6 outputs at 6 (bounded)": (raw.with_(bounded_scales=True), {}),
                "KL, first conv input at abs_max": (raw, {first_input: absmax[first_input]}),
                "KL, classifier input at abs_max": (raw, {classifier_input: absmax[classifier_input]}),
                "KL on relu6 outputs only": (raw.with_(algo="abs_max"), {n: kl[n] for n in relu6}),
                "KL on all but relu6 outputs": (raw.with_(algo="abs_max"), {n: kl[n] for n in others}),
            }
            print(
                f"\nevaluated on the {args.split} split ({len(evaluation)} images), FP32 top-1 {search.fp32_top1:.1%}:"
            )
            print(f"{'model':<36} {'top-1':>7} {'drop':>6} {'+/-':>7} {'agree':>7} {'KL div':>8}")
            for label, (recipe, overrides) in ablations.items():
                c = search.measure(recipe, "diagnosis", overrides)
                print(
                    f"{label:<36} {c.top1:>7.1%} {c.drop:>+6.2f} {f'+{c.gained}/-{c.lost}':>7} {c.agreement:>7.1%} "
                    f"{c.divergence:>8.4f}"
                )
        finally:
            search.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
