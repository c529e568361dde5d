"""``pdserve quantize``: post-training static INT8 quantization of a repository model.

Uses Paddle's own ``paddle.static.quantization.PostTrainingQuantization(onnx_format=True)``, which
was measured to produce the same model as PaddleSlim's ``quant_post_static`` (whose pinned
dependencies install ``opencv-python==4.6`` and break ``import cv2`` with numpy 2), through
``quantization.calibration`` (statistics collected once, models built from a :class:`Recipe`). With
``--target-drop`` the recipe is searched for (``quantization.search``); otherwise it is given.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdserve.model_config import CONFIG_FILE, ModelConfig, load_model_config
from pdserve.pipeline.dataset import MAX_PIXELS, Sample
from pdserve.pipeline.errors import PipelineError
from pdserve.pipeline.export import next_version, require_legacy_format, write_config
from pdserve.pipeline.local import LocalModel, predict_timed
from pdserve.pipeline.quantization.recipe import Recipe
from pdserve.runtime.predictor_config import PIR_ADVICE, find_model_files, is_pir

if TYPE_CHECKING:
    from pdserve.pipeline.quantization.search import Search, SearchOptions

__all__ = ["CALIBRATION_IMAGES", "quantize_repository_model"]


def _versions() -> dict[str, str]:
    import paddle

    return {
        "paddle": paddle.version.full_version,
        "paddle_commit": paddle.version.commit,
        "python": platform.python_version(),
    }


CALIBRATION_IMAGES = "calibration_images.txt"


VALIDATION_IMAGES = 32


def write_validation_set(source: LocalModel, version_dir: Path, samples: list[Sample]) -> dict[str, Any]:
    """The set every worker runs at load (``pdserve.runtime.validation``): crops of the first calibration
    images and the FP32 model's outputs for them. A consistency check of the INT8 model against
    FP32 where it runs, not an accuracy measurement, so calibration images are fine for it."""
    from pdserve.preprocess import Normalizer, crop, decode_image
    from pdserve.runtime.validation import ValidationSet

    spec = source.config.preprocessing
    chosen = samples[:VALIDATION_IMAGES]
    jpegs = ValidationSet.encode(np.stack([crop(decode_image(s.path.read_bytes(), MAX_PIXELS), spec) for s in chosen]))
    crops = ValidationSet.decode(jpegs)
    reference, _ = predict_timed(source, Normalizer(spec)(crops), 8)
    path = ValidationSet(jpegs, reference.astype(np.float32)).save(version_dir)
    return {"file": path.name, "images": len(chosen), "bytes": path.stat().st_size}


def _search_summary(report: Path) -> dict[str, Any] | None:
    """What a search report says of its chosen candidate, as ``calibration.search`` records it."""
    if report.suffix != ".json" or not report.is_file():
        return None
    doc = json.loads(report.read_text())
    chosen = doc.get("chosen") if isinstance(doc, dict) else None
    if not isinstance(chosen, dict):
        return None
    isas = doc.get("isas") or []
    return {
        "target_drop": doc.get("target_drop"),
        "met": doc.get("met"),
        "images": doc.get("images"),
        "fp32_top1": round(doc["fp32"]["top1"], 4),
        "top1": round(chosen["top1"], 4),
        "drop": chosen["drop"],
        "isas": isas,
        "per_isa": _per_isa(chosen, isas),
    }


def _per_isa(chosen: dict[str, Any], isas: list[str]) -> dict[str, dict[str, float]]:
    if chosen.get("per_isa"):
        return {isa: {k: round(v, 4) for k, v in m.items()} for isa, m in chosen["per_isa"].items()}
    keys = ("top1", "agreement", "drop")
    return {isas[0]: {k: round(chosen[k], 4) for k in keys}} if isas else {}


def _source_model(model_dir: Path, version: int | None) -> LocalModel:
    require_legacy_format()
    source = LocalModel.open(model_dir, version)
    if source.config.precision != "fp32":
        raise PipelineError(f"{model_dir} is {source.config.precision}; quantize an fp32 model")
    if not (source.version_dir / "model.pdmodel").is_file():
        found = find_model_files(source.version_dir)
        if found is not None and is_pir(found[0]):
            raise PipelineError(f"{found[0]} is a Paddle 3 PIR program. {PIR_ADVICE}")
        raise PipelineError(f"{source.version_dir}/model.pdmodel not found (export with FLAGS_enable_pir_api=0)")
    return source


def quantize_repository_model(
    model_dir: Path,
    output: Path,
    samples: list[Sample],
    source: str,
    *,
    version: int | None = None,
    recipe: Recipe | None = None,
    batch_size: int = 10,
    batch_nums: int | None = None,
    search: SearchOptions | None = None,
    recipe_source: str | None = None,
) -> dict[str, Any]:
    """Quantize a version of ``model_dir`` into a new model folder (or a new version of it).

    Without ``search``, ``recipe`` (default: hist) is applied; with it, the recipe is searched for
    and the chosen candidate is written.
    """
    from pdserve.pipeline.quantization.search import Search, SearchOptions, quiet_paddle

    source_model = _source_model(model_dir, version)
    recipe = recipe or Recipe()
    output.mkdir(parents=True, exist_ok=True)
    version_dir = output / str(next_version(output))
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    options = search or SearchOptions([], "", 0.0)
    with quiet_paddle():
        job = Search(
            source_model,
            samples,
            options.evaluation,
            target_drop=options.target_drop,
            batch_size=batch_size,
            batch_nums=batch_nums or recipe.batch_nums,
            time_budget_s=options.time_budget_s,
            threads=options.threads,
            cache_dir=options.cache_dir,
            evaluate=search is not None,
            isas=options.isas,
        )
        try:
            if search is None:
                job.build(recipe, version_dir)
            else:
                recipe, extra = _searched(job, search, version_dir, output)
        finally:
            job.close()
    record = _record(recipe, job, source, f"{model_dir.name}/{source_model.version}", time.perf_counter() - started)
    if "search" in extra:
        record["search"] = extra["search"]
    if recipe_source:
        record["recipe_source"] = recipe_source  # e.g. the search report that chose it
        chosen_by = _search_summary(Path(recipe_source))
        if chosen_by is not None:  # rebuilt from a search's report: keep what it was chosen with, per ISA
            record["search"] = chosen_by
    record["validation"] = write_validation_set(source_model, version_dir, samples)
    _write_folder(output, model_dir, source_model.config, recipe, record, job.calibration)
    return {
        "model_dir": str(output),
        "version": int(version_dir.name),
        **record,
        **{k: v for k, v in extra.items() if k != "search"},
    }


def _searched(job: Search, search: SearchOptions, version_dir: Path, output: Path) -> tuple[Recipe, dict[str, Any]]:
    """Run the search; copy the chosen candidate's files into ``version_dir``; its summary and report."""
    from pdserve.pipeline.quantization.report import format_search_report, write_report

    result = job.run(search.algos, max_fallback=search.max_fallback, always_analyse=search.sensitivity)
    if result.chosen is None:
        raise PipelineError("the search built no model; " + "; ".join(result.notes))
    recipe = result.chosen.recipe
    shutil.copytree(job.model_files(recipe), version_dir)
    summary = {
        "target_drop": result.target_drop,
        "met": result.met,
        "evaluation": search.evaluation_source,
        "images": result.images,
        "fp32_top1": round(result.fp32_top1, 4),
        "top1": round(result.chosen.top1, 4),
        "drop": result.chosen.drop,
        "isas": result.isas,
        "per_isa": _per_isa(result.chosen.as_dict(), result.isas),
        "candidates": len(result.candidates),
    }
    report_dir = search.report_dir or output / "search"
    return recipe, {"search": summary, "files": write_report(result, report_dir), "table": format_search_report(result)}


def _record(recipe: Recipe, job: Search, source: str, from_model: str, seconds: float) -> dict[str, Any]:
    """config.yaml's ``calibration``: how the INT8 model was made, with what, when."""
    return {
        "algo": recipe.algo,
        "recipe": recipe.as_dict(),
        "images": len(job.calibration),
        "batch_size": job.batch_size,
        "batch_nums": job.batch_nums,
        "onnx_format": True,
        "source": source,
        "image_list": CALIBRATION_IMAGES,
        "from_model": from_model,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(seconds, 1),
        "tools": _versions(),
    }


def _write_folder(
    output: Path, model_dir: Path, config: ModelConfig, recipe: Recipe, record: dict[str, Any], used: list[Sample]
) -> None:
    """The INT8 model folder's config.yaml (serving settings an operator set are kept), the list of
    calibration images, and the labels."""
    doc = config.model_dump(mode="json", exclude_none=True)
    fallback = f", {len(recipe.fp32_layers)} layers FP32" if recipe.fp32_layers else ""
    doc.update(
        precision="int8",
        description=f"{config.description} - INT8 post-training quantization ({recipe.name}, "
        f"{len(used)} images{fallback})",
        calibration=record,
    )
    if (output / CONFIG_FILE).exists():  # keep what the operator set for serving
        kept = load_model_config(output).model_dump(mode="json", exclude_none=True)
        for key in ("instances", "cpu_threads", "max_batch_size", "max_queue_delay_ms", "max_queue_size"):
            if key in kept:
                doc[key] = kept[key]
    write_config(output, doc)
    # Exactly which images calibrated it, so that evaluate can refuse to measure on them.
    (output / CALIBRATION_IMAGES).write_text("".join(f"{s.path.name} {s.label}\n" for s in used))
    if config.labels:
        shutil.copyfile(model_dir / config.labels, output / config.labels)
