"""``pdserve quantize``: post-training static INT8 quantization of a repository model.

Uses Paddle's own ``paddle.static.quantization.PostTrainingQuantization(onnx_format=True)``, which
was measured to produce the same model as PaddleSlim's ``quant_post_static`` (whose pinned
dependencies install ``opencv-python==4.6`` and break ``import cv2`` with numpy 2), through
``pdserve.pipeline.ptq`` (statistics collected once, models built from a :class:`Recipe`). With
``--target-drop`` the recipe is searched for (``pdserve.pipeline.search``); otherwise it is given.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.model_config import CONFIG_FILE, load_model_config
from pdserve.pipeline.dataset import MAX_PIXELS, PipelineError, Sample
from pdserve.pipeline.evaluate import LocalModel, predict_timed
from pdserve.pipeline.export import next_version, require_legacy_format, write_config
from pdserve.pipeline.ptq import ALGOS, Recipe
from pdserve.runtime.predictor_config import PIR_ADVICE, find_model_files, is_pir

__all__ = ["ALGOS", "CALIBRATION_IMAGES", "Recipe", "quantize_repository_model", "read_recipe"]


def _versions() -> dict[str, str]:
    import paddle

    return {
        "paddle": paddle.version.full_version,
        "paddle_commit": paddle.version.commit,
        "python": platform.python_version(),
    }


CALIBRATION_IMAGES = "calibration_images.txt"


def read_recipe(path: Path) -> Recipe:
    """A recipe from JSON: a bare recipe, a search report (its chosen one), or a model's config record."""
    import yaml

    if not path.is_file():
        raise PipelineError(f"recipe file {path} not found")
    doc = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    if isinstance(doc, dict) and isinstance(doc.get("chosen"), dict):
        doc = doc["chosen"]
    if isinstance(doc, dict) and isinstance(doc.get("calibration"), dict):
        doc = doc["calibration"]
    if isinstance(doc, dict) and isinstance(doc.get("recipe"), dict):
        doc = doc["recipe"]
    if not isinstance(doc, dict):
        raise PipelineError(f"{path}: no recipe in it")
    return Recipe.from_dict(doc)


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
    search: dict[str, Any] | None = None,
    recipe_source: str | None = None,
) -> dict[str, Any]:
    """Quantize a version of ``model_dir`` into a new model folder (or a new version of it).

    Without ``search``, ``recipe`` (default: hist) is applied; with it, the recipe is searched for
    (keys: evaluation, target_drop, algos, max_fallback, time_budget_s, threads, cache_dir,
    report_dir) and the chosen candidate is written.
    """
    from pdserve.pipeline.search import Search, format_report, quiet_paddle, write_report

    source_model = _source_model(model_dir, version)
    recipe = recipe or Recipe()
    output.mkdir(parents=True, exist_ok=True)
    out_version = next_version(output)
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    with quiet_paddle():
        job = Search(
            source_model,
            samples,
            (search or {}).get("evaluation", []) or samples[:0],
            target_drop=(search or {}).get("target_drop", 0.0),
            batch_size=batch_size,
            batch_nums=batch_nums or recipe.batch_nums,
            time_budget_s=(search or {}).get("time_budget_s"),
            threads=(search or {}).get("threads", 2),
            cache_dir=(search or {}).get("cache_dir"),
            evaluate=search is not None,
            isas=(search or {}).get("isas", ("AVX2",)),
        )
        try:
            if search is None:
                job.build(recipe, output / str(out_version))
            else:
                result = job.run(
                    tuple(search.get("algos") or ALGOS),
                    max_fallback=search.get("max_fallback", 10),
                    always_analyse=search.get("sensitivity", False),
                )
                if result.chosen is None:
                    raise PipelineError("the search built no model; " + "; ".join(result.notes))
                recipe = result.chosen.recipe
                shutil.copytree(job.model_files(recipe), output / str(out_version))
                report_dir = Path(search.get("report_dir") or output / "search")
                extra = {
                    "search": {
                        "target_drop": result.target_drop,
                        "met": result.met,
                        "evaluation": search.get("evaluation_source", ""),
                        "images": result.images,
                        "fp32_top1": round(result.fp32_top1, 4),
                        "top1": round(result.chosen.top1, 4),
                        "drop": result.chosen.drop,
                        "isas": result.isas,
                        "per_isa": _per_isa(result.chosen.as_dict(), result.isas),
                        "candidates": len(result.candidates),
                    },
                    "files": write_report(result, report_dir),
                    "table": format_report(result),
                }
        finally:
            job.close()
    used = job.calibration
    seconds = time.perf_counter() - started
    record = {
        "algo": recipe.algo,
        "recipe": recipe.as_dict(),
        "images": len(used),
        "batch_size": batch_size,
        "batch_nums": job.batch_nums,
        "onnx_format": True,
        "source": source,
        "image_list": CALIBRATION_IMAGES,
        "from_model": f"{model_dir.name}/{source_model.version}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(seconds, 1),
        "tools": _versions(),
    }
    if "search" in extra:
        record["search"] = extra["search"]
    if recipe_source:
        record["recipe_source"] = recipe_source  # e.g. the search report that chose it
        chosen_by = _search_summary(Path(recipe_source))
        if chosen_by is not None:  # rebuilt from a search's report: keep what it was chosen with, per ISA
            record["search"] = chosen_by
    record["validation"] = write_validation_set(source_model, output / str(out_version), samples)
    config = source_model.config
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
    return {
        "model_dir": str(output),
        "version": out_version,
        **record,
        **{k: v for k, v in extra.items() if k != "search"},
    }
