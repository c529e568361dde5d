"""Published model folders configured from their own YAML (repository/published.py), and the
preprocessing that YAML describes reproduced to within 1e-5 of the framework's deploy code.

The reference transforms below are written here from PaddleClas's ``deploy/python/preprocess.py``
and PaddleDetection's ``deploy/python/preprocess.py`` semantics (neither package is installed), not
from pdserve's code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from pdserve.errors import ModelConfigError
from pdserve.model_config import Detection, ModelConfig, Preprocessing
from pdserve.preprocess import DetectionNormalizer, preprocess, resize_for_detection
from pdserve.repository.published import derive, load_config, merge

# PaddleX 3's inference.yml for an image classifier (PP-LCNet_x1_0), as released; labels shortened.
PADDLEX_CLASSIFIER = """\
Global:
  model_name: PP-LCNet_x1_0
Hpi:
  backend_configs:
    paddle_infer:
      trt_dynamic_shapes: &id001
        x:
        - [1, 3, 224, 224]
        - [1, 3, 224, 224]
        - [8, 3, 224, 224]
    tensorrt:
      dynamic_shapes: *id001
PreProcess:
  transform_ops:
  - ResizeImage:
      resize_short: 256
  - CropImage:
      size: 224
  - NormalizeImage:
      channel_num: 3
      mean:
      - 0.485
      - 0.456
      - 0.406
      order: ''
      scale: 0.00392156862745098
      std:
      - 0.229
      - 0.224
      - 0.225
  - ToCHWImage: null
PostProcess:
  Topk:
    topk: 5
    label_list:
    - tench, Tinca tinca
    - goldfish, Carassius auratus
    - great white shark, white shark
"""

# PaddleClas 2.x's exported inference.yml (paddleclas export with Global.export_type paddle).
PADDLECLAS_CLASSIFIER = """\
PreProcess:
  transform_ops:
  - ResizeImage:
      resize_short: 256
      interpolation: bicubic
      backend: cv2
  - CropImage:
      size: 224
  - NormalizeImage:
      scale: 1.0/255.0
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
      order: ''
  - ToCHWImage:
PostProcess:
  name: Topk
  Topk:
    topk: 5
    class_id_map_file: ppcls/utils/imagenet1k_label_list.txt
"""

# PaddleDetection 2.x's infer_cfg.yml for PP-YOLOE+ (tools/export_model.py), labels shortened.
PADDLEDETECTION_DETECTOR = """\
mode: paddle
draw_threshold: 0.5
metric: COCO
use_dynamic_shape: false
Global:
  model_name: PP-YOLOE_plus-S
arch: YOLO
min_subgraph_size: 3
Preprocess:
- interp: 2
  keep_ratio: false
  target_size:
  - 640
  - 640
  type: Resize
- mean:
  - 0.0
  - 0.0
  - 0.0
  norm_type: none
  std:
  - 1.0
  - 1.0
  - 1.0
  type: NormalizeImage
- type: Permute
label_list:
- person
- bicycle
- car
"""

# A Faster R-CNN style export: keep_ratio resize, ImageNet mean/std, PadStride.
PADDLEDETECTION_KEEP_RATIO = """\
mode: paddle
draw_threshold: 0.5
metric: COCO
use_dynamic_shape: true
arch: RCNN
min_subgraph_size: 40
Preprocess:
- interp: 1
  keep_ratio: true
  target_size: [800, 1333]
  type: Resize
- is_scale: true
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  type: NormalizeImage
- type: Permute
- stride: 32
  type: PadStride
label_list: [person, bicycle]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- translation ---------------------------------------------------------------------------------


def test_paddlex_classifier_yaml_becomes_an_image_config(tmp_path: Path) -> None:
    derived = derive(write(tmp_path, "inference.yml", PADDLEX_CLASSIFIER))
    config = ModelConfig.model_validate(derived.config)
    assert config.kind == "image"
    assert config.input.name == "x"
    assert config.input.shape == (3, 224, 224)
    pre = config.preprocessing
    assert (pre.resize_shorter, pre.crop, pre.interpolation, pre.reduced_jpeg_decode) == (256, 224, "bilinear", False)
    assert pre.mean == pytest.approx((123.675, 116.28, 103.53))
    assert pre.std == pytest.approx((58.395, 57.12, 57.375))
    assert derived.labels == ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark, white shark"]
    assert config.description == "PP-LCNet_x1_0 (from inference.yml)"


def test_paddleclas_scale_as_text_and_bicubic(tmp_path: Path) -> None:
    derived = derive(write(tmp_path, "inference.yml", PADDLECLAS_CLASSIFIER))
    pre = ModelConfig.model_validate(derived.config).preprocessing
    assert pre.interpolation == "bicubic"
    assert pre.mean == pytest.approx((123.675, 116.28, 103.53))
    assert derived.labels is None  # class_id_map_file points into PaddleClas's source tree, not the folder


def test_paddledetection_yaml_becomes_a_detection_config(tmp_path: Path) -> None:
    derived = derive(write(tmp_path, "infer_cfg.yml", PADDLEDETECTION_DETECTOR))
    config = ModelConfig.model_validate(derived.config)
    assert config.kind == "detection"
    det = config.detection
    assert (det.target_size, det.keep_ratio, det.interp, det.norm_type, det.is_scale) == (
        (640, 640),
        False,
        2,
        "none",
        True,
    )
    assert (det.score_threshold, det.arch, det.padded_size) == (0.5, "YOLO", (640, 640))
    assert derived.labels == ["person", "bicycle", "car"]


def test_keep_ratio_pads_to_the_long_target_and_the_stride(tmp_path: Path) -> None:
    config = ModelConfig.model_validate(derive(write(tmp_path, "infer_cfg.yml", PADDLEDETECTION_KEEP_RATIO)).config)
    assert config.detection.keep_ratio
    assert config.detection.pad_stride == 32
    assert config.detection.padded_size == (1344, 1344)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PADDLEX_CLASSIFIER.replace("CropImage:", "RandCropImage:"), r"transform ops \['RandCropImage'\]"),
        (PADDLEX_CLASSIFIER.replace("resize_short: 256", "resize_short: 256\n      backend: pil"), "backend 'pil'"),
        (PADDLEX_CLASSIFIER.replace("order: ''", "order: chw"), "order 'chw'"),
        (PADDLEX_CLASSIFIER.replace("      channel_num: 3\n", "      channel_num: 4\n"), "channel_num 3"),
        (
            PADDLEDETECTION_DETECTOR.replace("type: Permute", "type: Permute\n- type: LetterBoxResize"),
            "LetterBoxResize",
        ),
        (PADDLEDETECTION_DETECTOR.replace("  keep_ratio: false\n", "  keep_ratio: false\n  max_size: 1\n"), "max_size"),
        ("Global: {model_name: x}\n", "neither a classifier"),
    ],
)
def test_what_cannot_be_reproduced_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        derive(write(tmp_path, "inference.yml", text))


def test_config_yaml_beside_the_published_folder_overrides_it(tmp_path: Path) -> None:
    version = tmp_path / "1"
    version.mkdir()
    write(version, "infer_cfg.yml", PADDLEDETECTION_DETECTOR)
    write(tmp_path, "config.yaml", yaml.safe_dump({"instances": 2, "detection": {"score_threshold": 0.3}}))
    loaded = load_config(tmp_path)
    assert loaded.config.instances == 2
    assert loaded.config.detection.score_threshold == 0.3
    assert loaded.config.detection.interp == 2  # the rest of the section still comes from infer_cfg.yml
    assert loaded.labels == ["person", "bicycle", "car"]
    assert loaded.published == version / "infer_cfg.yml"


def test_a_tensor_config_ignores_the_published_yaml(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    write(tmp_path / "1", "inference.yml", "PreProcess: {transform_ops: [{DetResizeForTest: {}}]}\n")
    write(tmp_path, "config.yaml", "kind: tensor\n")
    assert load_config(tmp_path).config.kind == "tensor"


def test_no_config_and_no_published_yaml_says_both(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    with pytest.raises(ModelConfigError, match=r"config.yaml.*inference.yml"):
        load_config(tmp_path)


def test_merge_is_by_section() -> None:
    assert merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}, "d": 1}


# ---- the preprocessing, against the framework's own semantics --------------------------------------


def paddleclas_reference(rgb: np.ndarray, ops: list[dict[str, Any]]) -> np.ndarray:
    """PaddleClas deploy: ResizeImage (cv2, int(round(side * short / min))), CropImage ((w - s) // 2),
    NormalizeImage ((x.astype(float32) * scale - mean) / std, HWC), ToCHWImage."""
    img = rgb
    for op in ops:
        ((name, p),) = op.items()
        p = p or {}
        if name == "ResizeImage":
            h, w = img.shape[:2]
            interp = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}[p.get("interpolation", "bilinear")]
            if "resize_short" in p:
                percent = float(p["resize_short"]) / min(w, h)
                size = (int(round(w * percent)), int(round(h * percent)))  # noqa: RUF046 - as PaddleClas writes it
            else:
                size = (p["size"], p["size"])
            img = cv2.resize(img, size, interpolation=interp)
        elif name == "CropImage":
            s = p["size"]
            h, w = img.shape[:2]
            img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, :]
        elif name == "NormalizeImage":
            scale = p["scale"] if isinstance(p["scale"], float) else 1.0 / 255.0
            mean = np.array(p["mean"]).reshape((1, 1, 3)).astype("float32")
            std = np.array(p["std"]).reshape((1, 1, 3)).astype("float32")
            img = (img.astype("float32") * np.float32(scale) - mean) / std
        elif name == "ToCHWImage":
            img = img.transpose((2, 0, 1))
    return img.astype(np.float32)


def paddledetection_reference(rgb: np.ndarray, ops: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PaddleDetection deploy: Resize (cv2.resize with fx, fy), NormalizeImage, Permute, PadStride."""
    im = rgb
    im_shape, scale_factor = np.array(rgb.shape[:2], np.float32), np.ones(2, np.float32)
    for op in ops:
        kind = op["type"]
        if kind == "Resize":
            target = op["target_size"]
            h, w = im.shape[:2]
            if op.get("keep_ratio", True):
                s = min(target) / min(h, w)
                if np.round(s * max(h, w)) > max(target):
                    s = max(target) / max(h, w)
                sy = sx = s
            else:
                sy, sx = target[0] / h, target[1] / w
            im = cv2.resize(im, None, None, fx=sx, fy=sy, interpolation=op.get("interp", 1))
            im_shape = np.array(im.shape[:2]).astype("float32")
            scale_factor = np.array([sy, sx]).astype("float32")
        elif kind == "NormalizeImage":
            im = im.astype(np.float32, copy=False)
            if op.get("is_scale", True):
                im = im / 255.0
            if op.get("norm_type", "mean_std") == "mean_std":
                im -= np.array(op["mean"])[np.newaxis, np.newaxis, :]
                im /= np.array(op["std"])[np.newaxis, np.newaxis, :]
        elif kind == "Permute":
            im = im.transpose((2, 0, 1)).copy()
        elif kind == "PadStride":
            c, h, w = im.shape
            st = op["stride"]
            padded = np.zeros((c, int(np.ceil(h / st) * st), int(np.ceil(w / st) * st)), np.float32)
            padded[:, :h, :w] = im
            im = padded
    return im, im_shape, scale_factor


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(20)
    return [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((480, 640), (333, 500), (1024, 300), (224, 224))
    ]


@pytest.mark.parametrize("text", [PADDLEX_CLASSIFIER, PADDLECLAS_CLASSIFIER])
def test_classifier_preprocessing_matches_paddleclas_deploy(tmp_path: Path, text: str) -> None:
    derived = derive(write(tmp_path, "inference.yml", text))
    spec = Preprocessing.model_validate(derived.config["preprocessing"])
    ops = yaml.safe_load(text)["PreProcess"]["transform_ops"]
    for rgb in images():
        np.testing.assert_allclose(preprocess(rgb, spec), paddleclas_reference(rgb, ops), rtol=0, atol=1e-5)


def test_resize_to_a_size_matches_paddleclas_deploy(tmp_path: Path) -> None:
    text = PADDLEX_CLASSIFIER.replace("resize_short: 256", "size: 224").replace("  - CropImage:\n      size: 224\n", "")
    derived = derive(write(tmp_path, "inference.yml", text))
    spec = Preprocessing.model_validate(derived.config["preprocessing"])
    assert spec.resize_to == (224, 224)
    ops = yaml.safe_load(text)["PreProcess"]["transform_ops"]
    for rgb in images():
        np.testing.assert_allclose(preprocess(rgb, spec), paddleclas_reference(rgb, ops), rtol=0, atol=1e-5)


@pytest.mark.parametrize("text", [PADDLEDETECTION_DETECTOR, PADDLEDETECTION_KEEP_RATIO])
def test_detection_preprocessing_matches_paddledetection_deploy(tmp_path: Path, text: str) -> None:
    spec = Detection.model_validate(derive(write(tmp_path, "infer_cfg.yml", text)).config["detection"])
    ops = yaml.safe_load(text)["Preprocess"]
    normalizer = DetectionNormalizer(spec)
    for rgb in images():
        resized, im_shape, scale_factor = resize_for_detection(rgb, spec)
        ours = normalizer.batch([resized], spec.padded_size)[0]
        reference, ref_shape, ref_scale = paddledetection_reference(rgb, ops)
        np.testing.assert_array_equal(im_shape, ref_shape)
        np.testing.assert_array_equal(scale_factor, ref_scale)
        h, w = reference.shape[1:]
        np.testing.assert_allclose(ours[:, :h, :w], reference, rtol=0, atol=1e-5)
        assert not ours[:, h:, :].any()
        assert not ours[:, :, w:].any()  # padding beyond the reference's own is zeros, as batch padding is


def test_detection_batches_normalise_like_single_images() -> None:
    spec = Detection(target_size=(64, 64), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    resized = [resize_for_detection(rgb, spec)[0] for rgb in images()]
    normalizer = DetectionNormalizer(spec)
    batch = normalizer.batch(resized, spec.padded_size)
    for i, image in enumerate(resized):
        np.testing.assert_array_equal(batch[i], normalizer.batch([image], spec.padded_size)[0])
