"""``pdserve quantize``: post-training INT8 quantization of a repository model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pdserve.pipeline.commands.common import data_args, emit, given_samples
from pdserve.pipeline.dataset import read_label_list
from pdserve.pipeline.errors import GateFailed, PipelineError

HELP = "post-training INT8 quantization of a repository model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pdserve.pipeline.quantization.recipe import ALGOS

    p.add_argument("--model-dir", "--model", type=Path, required=True, help="the fp32 model folder")
    p.add_argument("--quantize-model-path", "--output", type=Path, required=True, help="the int8 model folder")
    p.add_argument("--version", type=int, help="version of the fp32 model (default: newest)")
    data_args(p)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--batch-nums", type=int, help="calibration batches (default: all images)")
    recipe = p.add_argument_group("recipe (ignored by the search, which chooses one)")
    recipe.add_argument("--recipe", type=Path, help="a recipe: JSON, a search report.json, or an int8 config.yaml")
    recipe.add_argument(
        "--algo",
        default="hist",
        choices=ALGOS,
        help="default hist (0.99999, batch norm folded): what the search chose for EfficientNet-Lite0 (BENCHMARKS.md)",
    )
    recipe.add_argument("--hist-percent", type=float, default=0.99999, help="for algo hist")
    recipe.add_argument(
        "--weight-quantize-type", default="channel_wise_abs_max", choices=["channel_wise_abs_max", "abs_max"]
    )
    recipe.add_argument("--round-type", default="round", choices=["round", "adaround"])
    recipe.add_argument(
        "--no-fuse-bn", action="store_true", help="calibrate with batch norm unfolded (Paddle's default)"
    )
    recipe.add_argument(
        "--unbounded-scales",
        action="store_true",
        help="calibrate relu6 outputs like any tensor (Paddle's behaviour) instead of giving them their bound, 6",
    )
    recipe.add_argument("--fp32-layers", nargs="+", metavar="WEIGHT", help="layers to keep in FP32, by weight name")
    search = p.add_argument_group("accuracy-aware search")
    search.add_argument(
        "--target-drop", type=float, help="search for a recipe whose top-1 is at most this many points below FP32"
    )
    search.add_argument("--eval-list", type=Path, help="labelled images to choose on (never the calibration images)")
    search.add_argument(
        "--eval-root", type=Path, help="folder --eval-list's paths are relative to (default: --data-root)"
    )
    search.add_argument("--algos", nargs="+", choices=ALGOS, help="algorithms to try (default: all)")
    search.add_argument("--max-fallback", type=int, default=10, help="most layers to keep in FP32 (0: no analysis)")
    search.add_argument(
        "--sensitivity", action="store_true", help="analyse layer sensitivity even when a recipe meets the target"
    )
    search.add_argument("--time-budget-s", type=float, help="stop trying candidates after this long; keep the best")
    search.add_argument("--threads", type=int, default=2, help="math threads when measuring candidates")
    search.add_argument(
        "--isa",
        nargs="*",
        default=["AVX2"],
        metavar="ISA",
        help="oneDNN instruction sets to measure every candidate under besides this CPU's own (ONEDNN_MAX_CPU_ISA "
        "in a child process; only older ones than this CPU's can be emulated); ranked by the worst. "
        "Default: AVX2, the common cloud baseline whose INT8 kernels lose the most",
    )
    search.add_argument("--cache-dir", type=Path, help="reuse calibration statistics across runs from here")
    search.add_argument(
        "--report-dir", type=Path, help="report.json, report.txt, sensitivity.png (default: OUTPUT/search)"
    )
    search.add_argument(
        "--strict", action="store_true", help="refuse (exit 2) when --eval-list shares calibration images"
    )


def run(args: argparse.Namespace) -> None:
    from pdserve.pipeline.evaluate import overlap_warning
    from pdserve.pipeline.quantization.model import quantize_repository_model
    from pdserve.pipeline.quantization.recipe import ALGOS
    from pdserve.pipeline.quantization.search import SearchOptions

    samples = given_samples(args)
    source = str(args.label_list or args.data_dir)
    search = None
    if args.target_drop is not None:
        if not args.eval_list:
            raise PipelineError("--target-drop measures candidates on --eval-list (labelled images kept apart)")
        evaluation = read_label_list(args.eval_list, args.eval_root or args.data_root)
        shared = {s.path.name for s in samples} & {s.path.name for s in evaluation}
        if shared:
            warning = overlap_warning(len(shared), len(evaluation), "the model being quantized", sorted(shared)[0])
            if args.strict:
                raise PipelineError(warning + " (--strict)")
            print(f"pdserve quantize: WARNING: {warning}", file=sys.stderr)
        search = SearchOptions(
            evaluation,
            str(args.eval_list),
            args.target_drop,
            algos=tuple(args.algos or ALGOS),
            max_fallback=args.max_fallback,
            time_budget_s=args.time_budget_s,
            threads=args.threads,
            isas=tuple(args.isa),
            cache_dir=args.cache_dir,
            report_dir=args.report_dir,
            sensitivity=args.sensitivity,
        )
    elif args.eval_list:
        raise PipelineError("--eval-list is for the search; add --target-drop POINTS")
    result = quantize_repository_model(
        args.model_dir,
        args.quantize_model_path,
        samples,
        source,
        version=args.version,
        recipe=recipe_from(args),
        batch_size=args.batch_size,
        batch_nums=args.batch_nums,
        search=search,
        recipe_source=str(args.recipe) if args.recipe and search is None else None,
    )
    human = (
        f"quantized {args.model_dir} ({result['recipe'] and recipe_name(result)}, {result['images']} images, "
        f"{result['seconds']} s) to {result['model_dir']}/{result['version']}"
    )
    if "table" in result:
        human = result.pop("table") + "\n" + human + "\nreport: " + ", ".join(result["files"].values())
    emit(args, result, human)
    if search is not None and not result["search"]["met"]:
        raise GateFailed(
            f"no recipe kept top-1 within {args.target_drop:g} points of FP32 on {args.eval_list}; "
            f"wrote the closest ({recipe_name(result)}, drop {result['search']['drop']:+.2f})"
        )


def recipe_from(args: argparse.Namespace) -> Any:
    from pdserve.pipeline.quantization.recipe import Recipe, read_recipe

    if args.recipe:
        return read_recipe(args.recipe)
    return Recipe(
        algo=args.algo,
        hist_percent=args.hist_percent,
        weight_quantize_type=args.weight_quantize_type,
        round_type=args.round_type,
        fuse_bn=not args.no_fuse_bn,
        bounded_scales=not args.unbounded_scales,
        fp32_layers=tuple(args.fp32_layers or ()),
    )


def recipe_name(result: dict[str, Any]) -> str:
    from pdserve.pipeline.quantization.recipe import Recipe

    return str(Recipe.from_dict(result["recipe"]).name)
