"""Paddle models as they come, through the real app on a real uvicorn with real Paddle predictors:
a Paddle 3 PIR classifier in a PaddleX-style folder (inference.json + inference.yml, no config.yaml),
a detector with PaddleDetection's export signature configured from its infer_cfg.yml, the same
detector as raw tensors (kind: tensor over the same version folder), the shipped EfficientNet-Lite0
re-exported as PIR beside the legacy one, and a folder whose YAML asks for an op pdserve refuses."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml
from PIL import Image

from tests.helpers import MODEL_REPO, ROOT, ServerThread, running_app, sample_split, wait_until

pytestmark = pytest.mark.timeout(600)
JPEG = {"Content-Type": "image/jpeg"}

EXPORT = """
import sys
from pathlib import Path
import paddle
from paddle import nn
from pdserve.pipeline import efficientnet_pir, toy_detector

repo = Path(sys.argv[1])
paddle.seed(0)
net = nn.Sequential(nn.Conv2D(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2D(1), nn.Flatten(),
                    nn.Linear(8, 3), nn.Softmax())
net.eval()
spec = [paddle.static.InputSpec([None, 3, 32, 32], "float32", "x")]
for name in ("classifier", "refused"):
    paddle.jit.save(paddle.jit.to_static(net, input_spec=spec, full_graph=True), str(repo / name / "1" / "inference"))
toy_detector.export(repo / "detector" / "1" / "model", size=64)
if len(sys.argv) > 2:
    efficientnet_pir.reexport(Path(sys.argv[2]), repo / "efficientnet_pir" / "1")
"""

EXPORT_LEGACY = """
import sys
import paddle
from paddle import nn

paddle.seed(0)  # the same weights as the PIR classifier's
net = nn.Sequential(nn.Conv2D(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2D(1), nn.Flatten(),
                    nn.Linear(8, 3), nn.Softmax())
net.eval()
spec = [paddle.static.InputSpec([None, 3, 32, 32], "float32", "x")]
paddle.jit.save(paddle.jit.to_static(net, input_spec=spec, full_graph=True), sys.argv[1] + "/inference")
"""

# PaddleX 3's inference.yml layout (PP-LCNet's, with this toy model's sizes and three labels)
CLASSIFIER_YML = """\
Global:
  model_name: ToyNet
PreProcess:
  transform_ops:
  - ResizeImage:
      resize_short: 36
  - CropImage:
      size: 32
  - NormalizeImage:
      channel_num: 3
      mean: [0.485, 0.456, 0.406]
      order: ''
      scale: 0.00392156862745098
      std: [0.229, 0.224, 0.225]
  - ToCHWImage: null
PostProcess:
  Topk:
    topk: 5
    label_list:
    - cat
    - dog
    - bird
"""

# PaddleClas 2.x's exported inference.yml layout (the same transforms, written its way)
PADDLECLAS_YML = """\
PreProcess:
  transform_ops:
  - ResizeImage:
      resize_short: 36
  - CropImage:
      size: 32
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

# PaddleDetection 2.x's infer_cfg.yml layout (tools/export_model.py)
DETECTOR_YML = """\
mode: paddle
draw_threshold: 0.5
metric: COCO
use_dynamic_shape: false
arch: YOLO
min_subgraph_size: 3
Preprocess:
- interp: 2
  keep_ratio: false
  target_size:
  - 64
  - 64
  type: Resize
- is_scale: true
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  type: NormalizeImage
- type: Permute
label_list:
- person
- bicycle
- car
- dog
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    script = repo / "export.py"  # a file: paddle.jit.save reads forward()'s source
    script.write_text(EXPORT)
    legacy = MODEL_REPO / "efficientnet_lite0"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}  # Paddle 3's default: PIR programs
    subprocess.run([sys.executable, str(script), str(repo), str(legacy / "1")], check=True, env=env)
    # PaddleClas 2.x's layout: the legacy program as inference.pdmodel, scale written as a fraction
    legacy_dir = repo / "paddleclas_legacy" / "1"
    legacy_dir.mkdir(parents=True)
    script.write_text(EXPORT_LEGACY)
    subprocess.run([sys.executable, str(script), str(legacy_dir)], check=True, env={**env, "FLAGS_enable_pir_api": "0"})
    script.unlink()
    (legacy_dir / "inference.pdiparams.info").unlink(missing_ok=True)
    (legacy_dir / "inference.yml").write_text(PADDLECLAS_YML)
    (repo / "classifier" / "1" / "inference.yml").write_text(CLASSIFIER_YML)
    (repo / "refused" / "1" / "inference.yml").write_text(CLASSIFIER_YML.replace("CropImage", "RandCropImage"))
    (repo / "detector" / "1" / "infer_cfg.yml").write_text(DETECTOR_YML)
    # config.yaml beside a published folder overrides it: one worker, batches close only when full or at once
    (repo / "detector" / "config.yaml").write_text(yaml.safe_dump({"instances": 1, "max_batch_size": 8}))
    (repo / "detector_raw").mkdir()
    (repo / "detector_raw" / "1").symlink_to(repo / "detector" / "1")
    (repo / "detector_raw" / "config.yaml").write_text("kind: tensor\ninstances: 1\n")
    config = yaml.safe_load((legacy / "config.yaml").read_text()) | {"instances": 1}
    for name in ("efficientnet_legacy", "efficientnet_pir"):
        (repo / name).mkdir(exist_ok=True)
        (repo / name / "config.yaml").write_text(yaml.safe_dump(config))
        shutil.copy(legacy / "labels.txt", repo / name / "labels.txt")
    (repo / "efficientnet_legacy" / "1").symlink_to(legacy / "1")
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerThread]:
    with running_app(repo, ready=False, strict_readiness=False) as s:
        models = (
            "classifier",
            "paddleclas_legacy",
            "detector",
            "detector_raw",
            "efficientnet_legacy",
            "efficientnet_pir",
        )
        for name in models:
            wait_until(partial(serving, s.url, name), 180, f"{name} to serve")
        yield s


def serving(url: str, name: str) -> bool:
    return httpx.get(f"{url}/models/{name}/ready").status_code == 200


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def jpeg(seed: int, size: tuple[int, int]) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    rgb = cv2.GaussianBlur(noise, (9, 9), 3)  # photo-like: the JPEG keeps the detail the model sees
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=95)
    return out.getvalue()


def decoded(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---- formats and derived configs ---------------------------------------------------------------


def test_models_report_format_and_derived_config(client: httpx.Client) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    version = models["classifier"]["versions"][0]
    assert (version["program"], version["format"]) == ("inference.json", "pir")
    assert models["classifier"]["kind"] == "image"
    assert models["classifier"]["description"] == "ToyNet (from inference.yml)"
    assert models["classifier"]["input"] == {"name": "x", "shape": [3, 32, 32], "dtype": "float32"}
    assert models["detector"]["kind"] == "detection"
    assert models["detector"]["instances"] == 1  # config.yaml beside infer_cfg.yml
    assert models["efficientnet_legacy"]["versions"][0]["format"] == "pdmodel"
    assert models["paddleclas_legacy"]["versions"][0]["program"] == "inference.pdmodel"
    assert models["efficientnet_pir"]["versions"][0]["format"] == "pir"


def test_an_op_pdserve_cannot_reproduce_fails_its_model_by_name(client: httpx.Client) -> None:
    refused = client.get("/models/refused").json()
    assert refused["state"] == "FAILED"
    assert "RandCropImage" in refused["error"]
    assert client.get("/models/classifier/ready").status_code == 200  # the others serve


def test_pir_classifier_serves_with_paddlex_preprocessing_and_labels(client: httpx.Client) -> None:
    data = jpeg(1, (50, 70))
    response = client.post("/predict?model=classifier&top_k=3", content=data, headers=JPEG)
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(p["label"] for p in body["predictions"]) == ["bird", "cat", "dog"]
    # The same image preprocessed as PaddleX does (resize_short 36, crop 32, (x/255 - mean) / std), sent as
    # the float tensor: the same probabilities.
    rgb = decoded(data)
    h, w = rgb.shape[:2]
    percent = 36 / min(h, w)
    resized = cv2.resize(rgb, (round(w * percent), round(h * percent)), interpolation=cv2.INTER_LINEAR)
    top, left = (resized.shape[0] - 32) // 2, (resized.shape[1] - 32) // 2
    crop = resized[top : top + 32, left : left + 32].astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    x = ((crop * np.float32(1 / 255) - mean) / std).transpose(2, 0, 1)[None]
    v2 = triton.InferenceServerClient(client.base_url.netloc.decode())
    try:
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(x))
        probs = v2.infer("classifier", [tensor]).as_numpy("probabilities")[0]
    finally:
        v2.close()
    ours = {p["class_id"]: p["score"] for p in body["predictions"]}
    np.testing.assert_allclose([ours[i] for i in range(3)], probs, atol=1e-5)
    # The same network exported the legacy way in PaddleClas 2.x's layout: the same answer.
    legacy = client.post("/models/paddleclas_legacy/predict?top_k=3", content=data, headers=JPEG).json()
    assert {p["class_id"]: p["label"] for p in legacy["predictions"]} == {0: "0", 1: "1", 2: "2"}  # no label list
    np.testing.assert_allclose(
        [p["score"] for p in legacy["predictions"]], [p["score"] for p in body["predictions"]], atol=1e-5
    )


def test_pir_efficientnet_answers_as_the_legacy_one_on_the_report_split(client: httpx.Client) -> None:
    photos = sample_split("report")
    for first in range(0, len(photos), 8):
        files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p, _ in photos[first : first + 8]]
        answers = [
            client.post(f"/models/{m}/predict?top_k=1", files=files).json()["results"]
            for m in ("efficientnet_legacy", "efficientnet_pir")
        ]
        legacy, pir = ([r["predictions"][0] for r in a] for a in answers)
        assert [p["class_id"] for p in pir] == [p["class_id"] for p in legacy]
        np.testing.assert_allclose([p["score"] for p in pir], [p["score"] for p in legacy], atol=1e-4)


# ---- detection ----------------------------------------------------------------------------------

SIZES = [(120, 160), (64, 64), (300, 90)]


def boxes_of(client: httpx.Client, images: list[bytes], threshold: float | None = 0.0) -> list[list[dict[str, Any]]]:
    query = "" if threshold is None else f"?score_threshold={threshold}"
    files = [("file", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    response = client.post(f"/models/detector/predict{query}", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    return [r["boxes"] for r in body["results"]] if "results" in body else [body["boxes"]]


def test_batch_boxes_equal_each_image_alone(client: httpx.Client) -> None:
    images = [jpeg(10 + i, size) for i, size in enumerate(SIZES)]
    together = boxes_of(client, images)
    alone = [boxes_of(client, [data])[0] for data in images]
    assert any(together)  # the toy model keeps boxes scoring over 0.2
    for batch, single in zip(together, alone, strict=True):
        assert [b["class_id"] for b in batch] == [b["class_id"] for b in single]
        np.testing.assert_allclose(
            [b["box"] + [b["score"]] for b in batch], [b["box"] + [b["score"]] for b in single], rtol=1e-5, atol=1e-3
        )


def test_boxes_are_the_models_own_in_original_pixels(client: httpx.Client, server: ServerThread) -> None:
    """Against the raw model (kind: tensor, same folder) fed PaddleDetection's preprocessing, done here."""
    data = jpeg(3, (120, 160))
    ours = boxes_of(client, [data])[0]
    rgb = decoded(data)
    sy, sx = 64 / rgb.shape[0], 64 / rgb.shape[1]
    im = cv2.resize(rgb, None, None, fx=sx, fy=sy, interpolation=2).astype(np.float32) / 255.0
    im -= np.array([0.485, 0.456, 0.406])
    im /= np.array([0.229, 0.224, 0.225])
    feeds = {
        "image": im.transpose(2, 0, 1)[None].copy(),
        "im_shape": np.array([[64, 64]], np.float32),
        "scale_factor": np.array([[sy, sx]], np.float32),
    }
    v2 = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        inputs = []
        for name, array in feeds.items():
            tensor = triton.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = v2.infer("detector_raw", inputs)
        bbox_name = next(o["name"] for o in v2.get_model_metadata("detector_raw")["outputs"] if o["shape"] == [-1, 6])
        rows = result.as_numpy(bbox_name)
    finally:
        v2.close()
    rows = rows[np.argsort(-rows[:, 1], kind="stable")]
    assert len(rows) == len(ours)
    np.testing.assert_allclose([[b["class_id"], b["score"], *b["box"]] for b in ours], rows, rtol=1e-5, atol=1e-3)
    assert max(b["box"][2] for b in ours) > 64  # in the 160-pixel-wide original, not the 64-pixel input


def test_score_threshold_filters_and_defaults_to_draw_threshold(client: httpx.Client) -> None:
    data = jpeg(4, (100, 100))
    every = boxes_of(client, [data], 0.0)[0]
    default = boxes_of(client, [data], None)[0]
    high = boxes_of(client, [data], 0.9)[0]
    assert default == [b for b in every if b["score"] >= 0.5]
    assert high == [b for b in every if b["score"] >= 0.9]
    assert [b["score"] for b in every] == sorted((b["score"] for b in every), reverse=True)
    assert {b["label"] for b in every} <= {"person", "bicycle", "car", "dog"}


def test_a_bad_image_fails_only_its_request(client: httpx.Client) -> None:
    response = client.post("/models/detector/predict", content=b"not an image", headers=JPEG)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"
    bad = client.post("/models/detector/predict?score_threshold=2", content=jpeg(5, (64, 64)), headers=JPEG)
    assert bad.status_code == 422
    assert boxes_of(client, [jpeg(5, (64, 64))]) is not None  # still serving


def test_v2_offers_the_detector_as_images(server: ServerThread, client: httpx.Client) -> None:
    images = [jpeg(20 + i, size) for i, size in enumerate(SIZES)]
    v2 = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        meta = v2.get_model_metadata("detector")
        assert [i["name"] for i in meta["inputs"]] == ["image"]
        tensor = triton.InferInput("image", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=object))
        result = v2.infer("detector", [tensor])
        bbox, counts = result.as_numpy("bbox"), result.as_numpy("bbox_num")
        raw = triton.InferInput("im_shape", [1, 2], "FP32")
        raw.set_data_from_numpy(np.ones((1, 2), np.float32))
        with pytest.raises(triton.InferenceServerException, match="kind: tensor"):
            v2.infer("detector", [raw])
    finally:
        v2.close()
    assert counts.tolist() == [len(b) for b in boxes_of(client, images)]
    assert bbox.shape == (counts.sum(), 6)
