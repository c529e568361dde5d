"""Model folders as Paddle's tools publish them, configured from their own YAML.

A version folder may carry the preprocessing and labels its exporter wrote down:

- PaddleX 3 / PaddleClas ``inference.yml`` for classifiers: ``PreProcess.transform_ops`` (``ResizeImage``,
  ``CropImage``, ``NormalizeImage``, ``ToCHWImage``) and ``PostProcess.Topk.label_list``;
- PaddleDetection 2.x ``infer_cfg.yml`` (and PaddleX 3's detection ``inference.yml``, the same format):
  ``Preprocess`` (``Resize``, ``NormalizeImage``, ``Permute``, ``PadStride``), ``label_list``, ``arch``,
  ``draw_threshold``.

They are translated here, once, into ``config.yaml``'s fields; a ``config.yaml`` in the model folder
overrides any of them. Ops pdserve cannot reproduce exactly are refused by name, never skipped: a
preprocessing step left out costs accuracy silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pdserve.errors import ModelConfigError
from pdserve.model_config import CONFIG_FILE, ModelConfig, read_config_file, validate_config, version_folders
from pdserve.runtime.predictor_config import find_model_files, is_pir
from pdserve.runtime.signature import read_pir_signature

PUBLISHED_FILES = ("inference.yml", "infer_cfg.yml")
_INTERPOLATIONS = {"nearest", "bilinear", "bicubic", "area", "lanczos"}
_FRACTION = re.compile(r"^\s*([0-9.]+)\s*/\s*([0-9.]+)\s*$")


@dataclass(frozen=True)
class Derived:
    """What a published YAML says, as ``config.yaml`` fields, and its labels."""

    source: Path
    config: dict[str, Any]
    labels: list[str] | None


def find_published(version_dir: Path) -> Path | None:
    return next((version_dir / n for n in PUBLISHED_FILES if (version_dir / n).is_file()), None)


def _refuse(path: Path, message: str) -> ModelConfigError:
    return ModelConfigError(f"{path}: {message}")


def _scale(value: Any, path: Path) -> float:
    """NormalizeImage's ``scale``: a number, or a fraction written as text (``1./255.``)."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _FRACTION.match(str(value))
    if match is None:
        raise _refuse(path, f"NormalizeImage scale {value!r} is neither a number nor a fraction a/b")
    return float(match.group(1)) / float(match.group(2))


def _check_params(op: str, params: dict[str, Any], known: set[str], path: Path) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise _refuse(path, f"{op}: parameters {unknown} are not supported (supported: {sorted(known)})")


def _three(values: Any, what: str, path: Path) -> tuple[float, float, float]:
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise _refuse(path, f"{what} must be 3 numbers (RGB), not {values!r}")
    a, b, c = (float(v) for v in values)
    return a, b, c


def _input_name(program: Path | None, default: str) -> str:
    """The program's first input: read from a PIR program (JSON, no Paddle needed); ``default`` otherwise."""
    if program is not None and is_pir(program):
        inputs = read_pir_signature(program).inputs
        if inputs:
            return inputs[0].name
    return default


def _classification(doc: dict[str, Any], path: Path, program: Path | None) -> Derived:
    ops = (doc.get("PreProcess") or {}).get("transform_ops")
    if not isinstance(ops, list) or not all(isinstance(op, dict) and len(op) == 1 for op in ops):
        raise _refuse(path, "PreProcess.transform_ops must be a list of one-key mappings ({Op: params})")
    names = [next(iter(op)) for op in ops]
    supported = ("DecodeImage", "ResizeImage", "CropImage", "NormalizeImage", "ToCHWImage")
    unknown = [n for n in names if n not in supported]
    if unknown:
        raise _refuse(path, f"transform ops {unknown} are not supported; pdserve reproduces {list(supported)}")
    params = {name: next(iter(op.values())) or {} for name, op in zip(names, ops, strict=True)}
    if "ResizeImage" not in params or "NormalizeImage" not in params or "ToCHWImage" not in names[-1:]:
        raise _refuse(path, f"transform ops {names}: pdserve needs ResizeImage, NormalizeImage and ToCHWImage last")
    if "CropImage" in params and names.index("CropImage") < names.index("ResizeImage"):
        raise _refuse(path, f"transform ops {names}: CropImage before ResizeImage is not supported")
    decode = params.get("DecodeImage", {})
    _check_params("DecodeImage", decode, {"to_rgb", "channel_first", "to_np"}, path)
    if decode.get("to_rgb", True) is not True or decode.get("channel_first", False):
        raise _refuse(path, "DecodeImage: pdserve decodes to RGB, HWC (to_rgb: true, channel_first: false)")

    pre: dict[str, Any] = {"reduced_jpeg_decode": False}  # decode every pixel, as the framework does
    resize = params["ResizeImage"]
    _check_params("ResizeImage", resize, {"resize_short", "size", "interpolation", "backend", "return_numpy"}, path)
    if str(resize.get("backend", "cv2")).lower() != "cv2":
        raise _refuse(path, f"ResizeImage backend {resize['backend']!r}: pdserve resizes with OpenCV (cv2)")
    interpolation = resize.get("interpolation") or "bilinear"  # UnifiedResize's cv2 default: INTER_LINEAR
    if interpolation not in _INTERPOLATIONS:
        raise _refuse(path, f"ResizeImage interpolation {interpolation!r}; supported: {sorted(_INTERPOLATIONS)}")
    pre["interpolation"] = interpolation
    if resize.get("resize_short"):
        pre["resize_shorter"] = int(resize["resize_short"])
        side = pre["resize_shorter"]
    elif resize.get("size"):
        size = resize["size"]
        w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        pre["resize_to"] = [w, h]
        side = min(w, h)
    else:
        raise _refuse(path, "ResizeImage needs resize_short or size")
    crop = params.get("CropImage")
    if crop is not None:
        _check_params("CropImage", crop, {"size"}, path)
        size = crop.get("size")
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise _refuse(path, f"CropImage size {size}: pdserve crops squares")
            size = size[0]
        side = int(size)
    elif "resize_to" in pre and pre["resize_to"][0] != pre["resize_to"][1]:
        raise _refuse(path, f"ResizeImage size {pre['resize_to']} without CropImage: pdserve serves square inputs")
    pre["crop"] = side
    norm = params["NormalizeImage"]
    _check_params("NormalizeImage", norm, {"scale", "mean", "std", "order", "channel_num", "output_fp16"}, path)
    if str(norm.get("order", "chw")) not in ("", "hwc"):
        # PaddleClas broadcasts mean/std as (3, 1, 1) with order chw, before ToCHWImage: not an RGB normalisation
        raise _refuse(path, f"NormalizeImage order {norm.get('order', 'chw')!r} before ToCHWImage; expected '' or hwc")
    if norm.get("channel_num", 3) != 3 or norm.get("output_fp16", False):
        raise _refuse(path, "NormalizeImage: pdserve feeds 3 channels as float32 (channel_num 3, output_fp16 false)")
    scale = _scale(norm.get("scale", 1 / 255), path)
    mean = _three(norm.get("mean", (0.485, 0.456, 0.406)), "NormalizeImage mean", path)
    std = _three(norm.get("std", (0.229, 0.224, 0.225)), "NormalizeImage std", path)
    # (x * scale - mean) / std  ==  (x - mean / scale) / (std / scale): pdserve's form, on 0..255 pixels
    pre["mean"] = [m / scale for m in mean]
    pre["std"] = [s / scale for s in std]

    config: dict[str, Any] = {
        "kind": "image",
        "input": {"name": _input_name(program, "x"), "shape": [3, side, side]},
        "preprocessing": pre,
        "output": {"softmax_applied": True},  # PaddleClas / PaddleX exports end in a softmax (infer_add_softmax)
    }
    name = (doc.get("Global") or {}).get("model_name")
    if name:
        config["description"] = f"{name} (from {path.name})"
    topk = (doc.get("PostProcess") or {}).get("Topk") or {}
    labels = topk.get("label_list")
    return Derived(path, config, [str(label) for label in labels] if labels else None)


def _detection(doc: dict[str, Any], path: Path) -> Derived:
    ops = doc.get("Preprocess")
    if not isinstance(ops, list) or not all(isinstance(op, dict) and "type" in op for op in ops):
        raise _refuse(path, "Preprocess must be a list of mappings with a type")
    names = [op["type"] for op in ops]
    order = ("Resize", "NormalizeImage", "Permute", "PadStride")
    unknown = [n for n in names if n not in order]
    if unknown:
        raise _refuse(path, f"Preprocess ops {unknown} are not supported; pdserve reproduces {list(order)}")
    if len(set(names)) != len(names) or names != sorted(names, key=order.index) or names[:1] != ["Resize"]:
        raise _refuse(path, f"Preprocess {names}: pdserve runs Resize, then NormalizeImage, Permute, PadStride")
    if "Permute" not in names:
        raise _refuse(path, f"Preprocess {names}: no Permute; the model takes CHW images")
    params = {op["type"]: {k: v for k, v in op.items() if k != "type"} for op in ops}
    det: dict[str, Any] = {}
    resize = params["Resize"]
    _check_params("Resize", resize, {"target_size", "keep_ratio", "interp"}, path)
    target = resize.get("target_size")
    target = [target, target] if isinstance(target, int) else target
    if not isinstance(target, list) or len(target) != 2:
        raise _refuse(path, f"Resize target_size {resize.get('target_size')!r}: expected [H, W]")
    det["target_size"] = [int(t) for t in target]
    det["keep_ratio"] = bool(resize.get("keep_ratio", True))  # PaddleDetection's default
    det["interp"] = int(resize.get("interp", 1))  # cv2.INTER_LINEAR
    norm = params.get("NormalizeImage")
    if norm is None:
        det.update(is_scale=False, norm_type="none")
    else:
        _check_params("NormalizeImage", norm, {"mean", "std", "is_scale", "norm_type"}, path)
        det["is_scale"] = bool(norm.get("is_scale", True))
        det["norm_type"] = norm.get("norm_type", "mean_std")
        if det["norm_type"] not in ("mean_std", "none"):
            raise _refuse(path, f"NormalizeImage norm_type {det['norm_type']!r}; supported: mean_std, none")
        if det["norm_type"] == "mean_std":
            det["mean"] = list(_three(norm.get("mean"), "NormalizeImage mean", path))
            det["std"] = list(_three(norm.get("std"), "NormalizeImage std", path))
    _check_params("Permute", params["Permute"], set(), path)
    if "PadStride" in params:
        _check_params("PadStride", params["PadStride"], {"stride"}, path)
        det["pad_stride"] = int(params["PadStride"].get("stride", 0))
    if "draw_threshold" in doc:
        det["score_threshold"] = float(doc["draw_threshold"])
    if doc.get("arch"):
        det["arch"] = str(doc["arch"])
    config: dict[str, Any] = {"kind": "detection", "detection": det}
    name = (doc.get("Global") or {}).get("model_name") or doc.get("arch")
    if name:
        config["description"] = f"{name} (from {path.name})"
    labels = doc.get("label_list")
    return Derived(path, config, [str(label) for label in labels] if labels else None)


def derive(path: Path, program: Path | None = None) -> Derived:
    """The config fields and labels a published YAML gives, or ``ModelConfigError`` naming what it cannot."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise _refuse(path, f"not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise _refuse(path, "must be a mapping")
    if isinstance(doc.get("PreProcess"), dict):
        return _classification(doc, path, program)
    if "Preprocess" in doc:
        return _detection(doc, path)
    raise _refuse(
        path,
        "neither a classifier's PreProcess.transform_ops (PaddleX / PaddleClas) nor a detector's Preprocess "
        "(PaddleDetection): write a config.yaml beside the version folders instead",
    )


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, section by section (``preprocessing.mean`` alone replaces only the mean)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def newest_published(model_dir: Path) -> Path | None:
    """The published YAML of the newest version folder that has one."""
    folders = version_folders(model_dir) if model_dir.is_dir() else {}
    return next((found for v in sorted(folders, reverse=True) if (found := find_published(folders[v]))), None)


@dataclass(frozen=True)
class LoadedConfig:
    config: ModelConfig
    labels: list[str] | None  # from the published YAML, when config.yaml names no labels file
    published: Path | None  # the YAML the config came from, if any


def load_config(model_dir: Path) -> LoadedConfig:
    """A model folder's config: ``config.yaml`` over what the newest version's published YAML says.

    A ``config.yaml`` with ``kind: tensor`` is taken alone (raw tensors need no preprocessing)."""
    raw = read_config_file(model_dir)
    published = newest_published(model_dir) if raw is None or raw.get("kind") != "tensor" else None
    if published is None:
        if raw is None:
            raise ModelConfigError(
                f"{model_dir / CONFIG_FILE}: missing (every model folder needs a {CONFIG_FILE}, or version folders "
                f"with one of {list(PUBLISHED_FILES)})"
            )
        return LoadedConfig(validate_config(model_dir, raw), None, None)
    files = find_model_files(published.parent)
    derived = derive(published, files[0] if files else None)
    source = CONFIG_FILE if raw else str(published.relative_to(model_dir))
    config = validate_config(model_dir, merge(derived.config, raw or {}), source)
    return LoadedConfig(config, None if config.labels else derived.labels, published)
