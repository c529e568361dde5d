"""Every candidate of a quantization search, rebuilt and measured on another split: the published table.

The search (``pdserve quantize --target-drop``, ``make int8-search``) chooses on the selection
split. This script takes its report.json, rebuilds each candidate from the same calibration images
(statistics reused from the cache the search filled) and measures it on the report split, paired
with FP32, so that the numbers published are from images that neither calibrated a model nor chose
the recipe. Prints a Markdown table. Needs FLAGS_enable_pir_api=0 (set here).

    .venv/bin/python benchmarks/recipe_table.py [--search model_repo/efficientnet_lite0_int8/search/report.json]
        [--split report] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("FLAGS_enable_pir_api", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdserve.pipeline.dataset import read_label_list  # noqa: E402
from pdserve.pipeline.errors import PipelineError  # noqa: E402
from pdserve.pipeline.local import LocalModel  # noqa: E402
from pdserve.pipeline.quantization.recipe import Recipe  # noqa: E402
from pdserve.pipeline.quantization.search import Search, quiet_paddle  # noqa: E402
from pdserve.pipeline.sample import sample_dir  # noqa: E402

INT8 = ROOT / "model_repo" / "efficientnet_lite0_int8"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", type=Path, default=INT8 / "search" / "report.json")
    parser.add_argument("--split", choices=["selection", "report"], default="report")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pdserve" / "calibration")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    searched = json.loads(args.search.read_text())
    chosen = searched["chosen"]["name"]
    calibration = read_label_list(ROOT / "data" / "imagenet-sample-calibration.txt", sample_dir())
    evaluation = read_label_list(ROOT / "data" / f"imagenet-sample-{args.split}.txt", sample_dir())
    fp32 = LocalModel.open(ROOT / "model_repo" / "efficientnet_lite0")
    rows = []
    with quiet_paddle():
        search = Search(fp32, calibration, evaluation, target_drop=0.5, cache_dir=args.cache_dir, log=lambda _: None)
        try:
            for doc in searched["candidates"]:
                recipe = Recipe.from_dict(doc["recipe"])
                try:
                    c = search.measure(recipe, doc["stage"])
                except PipelineError as exc:
                    print(f"{recipe.name}: {exc.message}", file=sys.stderr)
                    continue
                rows.append((doc, c))
        finally:
            search.close()
    print(
        f"{args.split} split, {len(evaluation)} images; FP32 top-1 {search.fp32_top1:.1%}, "
        f"top-5 {search.fp32_top5:.1%}, {search.fp32_rate:.0f} img/s; chosen on the selection split: `{chosen}`\n"
    )
    print("| recipe | stage | selection: drop | top-1 | top-5 | drop (points) | +/- | agreement | KL div | img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for doc, c in rows:
        mark = "**" if doc["name"] == chosen else ""
        print(
            f"| {mark}{c.name}{mark} | {c.stage} | {doc['drop']:+.2f} | {c.top1:.1%} | {c.top5:.1%} | {c.drop:+.2f} "
            f"| +{c.gained}/-{c.lost} | {c.agreement:.1%} | {c.divergence:.4f} | {c.images_per_s:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps([c.as_dict() for _, c in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
