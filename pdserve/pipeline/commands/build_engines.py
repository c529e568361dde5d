"""``pdserve build-engines``: build and cache TensorRT engines before serving (init container)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdserve.pipeline.commands.common import emit
from pdserve.pipeline.errors import PipelineError

HELP = "build and cache TensorRT engines before serving (init container)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-repo", type=Path, help="default: PDSERVE_MODEL_REPO or model_repo")
    p.add_argument("--models", nargs="+", help="only these model folders (default: all)")
    p.add_argument("--device", help="override every model's device, e.g. gpu:0 (default: PDSERVE_DEVICE)")
    p.add_argument("--cache-dir", type=Path, help="engine cache root (default: PDSERVE_TRT_CACHE_DIR)")


def run(args: argparse.Namespace) -> None:
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
    emit(args, results, format_build_report(results))
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        raise PipelineError(f"{len(failed)} of {len(results)} could not be built")
