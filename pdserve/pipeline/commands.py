"""The offline subcommands of ``pdserve``: export, quantize, evaluate, preprocess, calibrate, collect-shapes,
build-engines, bench, tune."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pdserve.pipeline.dataset import GateFailed, PipelineError, Sample, read_folder, read_label_list, select

# paddle.jit.save and PTQ need the legacy program format, chosen when Paddle is first imported.
LEGACY_FORMAT_COMMANDS = {"export", "quantize"}


def ensure_legacy_format(argv: list[str]) -> None:
    """Re-run this command with FLAGS_enable_pir_api=0 if it is not set."""
    if argv and argv[0] in LEGACY_FORMAT_COMMANDS and os.environ.get("FLAGS_enable_pir_api") != "0":  # noqa: SIM112
        env = {**os.environ, "FLAGS_enable_pir_api": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "pdserve", *argv], env)


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else human)


def _samples(args: argparse.Namespace) -> list[Sample]:
    if getattr(args, "label_list", None):
        samples = read_label_list(args.label_list, getattr(args, "data_root", None))
    elif getattr(args, "data_dir", None):
        samples = read_folder(args.data_dir)
    else:
        raise PipelineError("give --label-list FILE (lines 'path label') or --data-dir FOLDER")
    return select(samples, getattr(args, "limit", None))


def _export(args: argparse.Namespace) -> None:
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
    _emit(args, result, f"exported {args.arch}{note} to {result['model_dir']}/{result['version']}")


def _recipe(args: argparse.Namespace) -> Any:
    from pdserve.pipeline.quantize import Recipe, read_recipe

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


def _quantize(args: argparse.Namespace) -> None:
    from pdserve.pipeline.evaluate import overlap_warning
    from pdserve.pipeline.quantize import quantize_repository_model

    samples = _samples(args)
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
        search = {
            "evaluation": evaluation,
            "evaluation_source": str(args.eval_list),
            "target_drop": args.target_drop,
            "algos": args.algos,
            "max_fallback": args.max_fallback,
            "time_budget_s": args.time_budget_s,
            "threads": args.threads,
            "isas": tuple(args.isa),
            "cache_dir": args.cache_dir,
            "report_dir": args.report_dir,
            "sensitivity": args.sensitivity,
        }
    elif args.eval_list:
        raise PipelineError("--eval-list is for the search; add --target-drop POINTS")
    result = quantize_repository_model(
        args.model_dir,
        args.quantize_model_path,
        samples,
        source,
        version=args.version,
        recipe=_recipe(args),
        batch_size=args.batch_size,
        batch_nums=args.batch_nums,
        search=search,
        recipe_source=str(args.recipe) if args.recipe and search is None else None,
    )
    human = (
        f"quantized {args.model_dir} ({result['recipe'] and _recipe_name(result)}, {result['images']} images, "
        f"{result['seconds']} s) to {result['model_dir']}/{result['version']}"
    )
    if "table" in result:
        human = result.pop("table") + "\n" + human + "\nreport: " + ", ".join(result["files"].values())
    _emit(args, result, human)
    if search is not None and not result["search"]["met"]:
        raise GateFailed(
            f"no recipe kept top-1 within {args.target_drop:g} points of FP32 on {args.eval_list}; "
            f"wrote the closest ({_recipe_name(result)}, drop {result['search']['drop']:+.2f})"
        )


def _recipe_name(result: dict[str, Any]) -> str:
    from pdserve.pipeline.quantize import Recipe

    return str(Recipe.from_dict(result["recipe"]).name)


def _evaluate(args: argparse.Namespace) -> None:
    from pdserve.pipeline.evaluate import LocalModel, as_json, check_calibration_overlap, evaluate, format_table

    paths = ([args.baseline] if args.baseline else []) + list(args.models)
    models = [LocalModel.open(p, cpu_threads=args.threads) for p in paths]
    if args.max_drop is not None and len(models) < 2:
        raise PipelineError("--max-drop compares models with a baseline: give --baseline and --models")
    if args.data_file:
        results = evaluate(models, data_file=args.data_file, batch_size=args.batch_size)
    else:
        samples = _samples(args)
        for warning in check_calibration_overlap(models, samples, args.strict):
            print(f"pdserve evaluate: WARNING: {warning}", file=sys.stderr)
        results = evaluate(models, samples=samples, batch_size=args.batch_size)
    _emit(args, as_json(results), format_table(results))
    if args.max_drop is not None:
        base = results[0]
        for r in results[1:]:
            drop = r.drop_points(base)
            if drop > args.max_drop:
                raise GateFailed(
                    f"{r.model} top-1 {r.top1:.1%} is {drop:.1f} points below {base.model} ({base.top1:.1%}) on "
                    f"{r.images} images (+{r.gained}/-{r.lost} flips); --max-drop {args.max_drop:g}"
                )


def _preprocess(args: argparse.Namespace) -> None:
    import numpy as np

    from pdserve.pipeline.dataset import load_images, write_binary
    from pdserve.pipeline.evaluate import LocalModel

    model = LocalModel.open(args.model)
    spec = model.config.preprocessing
    if args.data_dim is not None and args.data_dim != spec.crop:
        raise PipelineError(f"--data-dim {args.data_dim} differs from the model's input size {spec.crop}")
    samples = select(read_label_list(args.label_list, args.data_dir), args.limit)
    images = load_images(samples, spec)
    write_binary(args.output_file, images, np.array([s.label for s in samples]))
    result = {"output_file": str(args.output_file), "images": len(samples), "shape": list(images.shape[1:])}
    _emit(args, result, f"wrote {len(samples)} images {list(images.shape[1:])} to {args.output_file}")


def _calibrate(args: argparse.Namespace) -> None:
    from pdserve.pipeline.calibrate import calibrate, require_cuda

    require_cuda()  # before reading any image
    result = calibrate(args.model, _samples(args), gpu=args.gpu, cache_dir=args.cache_dir)
    _emit(args, result, f"calibrated {args.model} on {result['images']} images; table in {result['cache_dir']}")


def _collect_shapes(args: argparse.Namespace) -> None:
    from pdserve.pipeline.engines import collect_shapes
    from pdserve.pipeline.evaluate import LocalModel

    result = collect_shapes(LocalModel.open(args.model, args.version), _samples(args))
    found = result["input"]
    human = (
        f"collected {result['tensors']} tensor shape ranges on {result['device']} (input {found['name']}: "
        f"min {found['min']}, opt {found['opt']}, max {found['max']}) into {result['shape_file']}"
    )
    _emit(args, result, human)


def _build_engines(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from pdserve.pipeline.engines import build_engines, format_build_report
    from pdserve.repository import Overrides
    from pdserve.settings import Settings

    # The server's own settings class, so the same PDSERVE_* variables (device, cache, repository) apply.
    given = {"model_repo": args.model_repo, "device": args.device, "trt_cache_dir": args.cache_dir}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise PipelineError("; ".join(str(e["msg"]) for e in exc.errors())) from None
    overrides = Overrides.from_settings(settings)
    results = build_engines(settings.model_repo, overrides, args.models)
    _emit(args, results, format_build_report(results))
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        raise PipelineError(f"{len(failed)} of {len(results)} could not be built")


def _bench(args: argparse.Namespace) -> None:
    from pdserve.pipeline.bench import bench_model, format_report
    from pdserve.pipeline.evaluate import LocalModel

    samples = _samples(args) if (args.label_list or args.data_dir) else []
    reports = []
    for path in args.models:
        model = LocalModel.open(path, cpu_threads=args.threads)
        reports += bench_model(model, args.batch_sizes, args.iterations, args.warmup, samples)
    human = format_report(reports)
    if len(args.models) > 1:
        base = {r["data"]["batch_size"]: r["performance"]["images_per_s"] for r in reports[: len(args.batch_sizes)]}
        for r in reports[len(args.batch_sizes) :]:
            ratio = r["performance"]["images_per_s"] / base[r["data"]["batch_size"]]
            human += (
                f"\n{r['model']['name']} at batch {r['data']['batch_size']}: {ratio:.2f}x the images/s of the first"
            )
    _emit(args, reports, human)


def _tune(args: argparse.Namespace) -> None:
    from pdserve.pipeline.tune import TuneOptions, Tuner, dump, format_report, model_folder

    folder = model_folder(args.model_repo, args.model)
    jpegs = [sample.path.read_bytes() for sample in _samples(args)]
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
    human = format_report(report)
    if best is not None and args.write:
        human += f"\nwritten to {tuner.write(best)}"
    if args.report:
        args.report.write_text(dump(report))
    _emit(args, report, human)
    if best is None or not report["met"]:
        raise GateFailed("no candidate met the goal" if best else "no candidate loaded and answered correctly")


def _data_args(p: argparse.ArgumentParser, folder: bool = True) -> None:
    p.add_argument("--label-list", type=Path, help="file of 'image-path class-id' lines (val_list.txt format)")
    p.add_argument("--data-root", type=Path, help="folder the list's paths are relative to (default: the list's)")
    if folder:
        p.add_argument("--data-dir", type=Path, help="a folder of images (unlabelled)")
    p.add_argument("--limit", type=int, help="use only the first N images")


def register(sub: Any) -> None:
    """Add the offline subcommands to the ``pdserve`` parser."""
    from pdserve.pipeline.export import ARCHITECTURES
    from pdserve.pipeline.quantize import ALGOS

    def add(name: str, fn: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.set_defaults(func=fn)
        return p

    p = add("export", _export, "export a Paddle model into a model-repository folder")
    p.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    p.add_argument("--output", type=Path, required=True, help="model folder, e.g. model_repo/resnet50")
    p.add_argument("--weights", type=Path, help="trained weights (.pdparams); without them weights are random")
    p.add_argument("--pretrained", action="store_true", help="efficientnet_lite0: import the pretrained weights")
    p.add_argument("--labels", type=Path, help="class names, one a line, copied into the model folder")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--version", type=int, help="version folder to write (default: the next number)")
    p.add_argument("--no-softmax", action="store_true", help="do not append a softmax")

    p = add("quantize", _quantize, "post-training INT8 quantization of a repository model")
    p.add_argument("--model-dir", "--model", type=Path, required=True, help="the fp32 model folder")
    p.add_argument("--quantize-model-path", "--output", type=Path, required=True, help="the int8 model folder")
    p.add_argument("--version", type=int, help="version of the fp32 model (default: newest)")
    _data_args(p)
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

    p = add("evaluate", _evaluate, "top-1/top-5 and throughput of models side by side")
    p.add_argument("--models", type=Path, nargs="+", required=True, help="model folders; the first is the reference")
    p.add_argument("--baseline", type=Path, help="the reference model (e.g. FP32), evaluated first")
    p.add_argument(
        "--max-drop",
        type=float,
        help="fail (exit 1) when a model's top-1 is more than this many points below the baseline's",
    )
    p.add_argument("--strict", action="store_true", help="refuse (exit 2) when evaluation images calibrated a model")
    _data_args(p, folder=False)
    p.add_argument("--data-file", type=Path, help="a binary file from 'pdserve preprocess' instead of images")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="cpu_math_library_num_threads (default: the model's)")

    p = add("preprocess", _preprocess, "turn labelled images into Paddle's binary ImageNet layout")
    p.add_argument("--model", type=Path, required=True, help="model folder whose preprocessing to apply")
    p.add_argument("--data-dir", type=Path, required=True, help="folder the label list's paths are relative to")
    p.add_argument("--label-list", type=Path, required=True)
    p.add_argument("--output-file", type=Path, required=True)
    p.add_argument("--data-dim", type=int, help="image side; must match the model's input")
    p.add_argument("--limit", type=int)

    p = add("calibrate", _calibrate, "TensorRT INT8 calibration on a GPU (use_calib_mode)")
    p.add_argument("--model", type=Path, required=True)
    _data_args(p)
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, help="where TensorRT keeps engines and the table")

    p = add("collect-shapes", _collect_shapes, "record tensor shape ranges for tensorrt.shape_mode: tuned")
    p.add_argument("model", type=Path, help="a model folder; the file goes into its version folder")
    p.add_argument("--version", type=int, help="version folder (default: newest)")
    _data_args(p)

    p = add("build-engines", _build_engines, "build and cache TensorRT engines before serving (init container)")
    p.add_argument("--model-repo", type=Path, help="default: PDSERVE_MODEL_REPO or model_repo")
    p.add_argument("--models", nargs="+", help="only these model folders (default: all)")
    p.add_argument("--device", help="override every model's device, e.g. gpu:0 (default: PDSERVE_DEVICE)")
    p.add_argument("--cache-dir", type=Path, help="engine cache root (default: PDSERVE_TRT_CACHE_DIR)")

    p = add("tune", _tune, "measure serving configurations on this machine and write the best into config.yaml")
    p.add_argument("model", help="a model name in --model-repo, or a model folder")
    p.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    _data_args(p)
    p.add_argument("--goal", choices=["throughput", "latency"], default="throughput")
    p.add_argument("--p99-ms", type=float, help="throughput goal: only configurations whose p99 stays under this")
    p.add_argument("--clients", type=int, default=16, help="closed-loop clients for the throughput goal")
    p.add_argument("--seconds", type=float, default=10.0, help="load per candidate")
    p.add_argument("--layouts", nargs="+", help="instances x threads to try, e.g. 1x2 2x1 (default: every split)")
    p.add_argument("--engines", nargs="+", choices=["onednn", "openvino"], help="default: both")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="max_batch_size values (default: 1 4 8 16)")
    p.add_argument("--delays-ms", type=float, nargs="+", help="max_queue_delay_ms values (default: 0 2 5)")
    p.add_argument("--cores", type=int, help="cores to plan for (default: those this process may use)")
    p.add_argument("--write", action="store_true", help="write the best into the model's config.yaml")
    p.add_argument("--report", type=Path, help="also write the full report as JSON here")

    from pdserve.pipeline import import_model

    import_model.add_parser(sub)

    p = add("bench", _bench, "in-process latency and throughput with a full inference report")
    p.add_argument("--models", type=Path, nargs="+", required=True, help="model folders; ratios are to the first")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, help="cpu_math_library_num_threads (default: the model's)")
    _data_args(p)
