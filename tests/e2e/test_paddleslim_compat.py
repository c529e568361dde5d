"""A model quantized by PaddleSlim's quant_post_static loads and serves like one from pdserve quantize.

PaddleSlim lives in ``.venv/paddleslim-side`` (installed by ``make test`` without its dependencies,
whose opencv-python pin breaks cv2), and runs in a subprocess that sees that folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from pdserve.model_config import load_model_config
from pdserve.pipeline.local import LocalModel
from pdserve.preprocess import load_and_preprocess
from tests.helpers import ROOT, running_app, sample_list

pytestmark = pytest.mark.timeout(900)
SIDE = ROOT / ".venv" / "paddleslim-side"

SLIM_SCRIPT = """
import sys
import numpy as np
import paddle
from paddleslim.quant import quant_post_static

images = np.load(sys.argv[3])
paddle.enable_static()
quant_post_static(
    executor=paddle.static.Executor(paddle.CPUPlace()),
    model_dir=sys.argv[1],
    quantize_model_path=sys.argv[2],
    data_loader=lambda: ({"x": images[i : i + 5]} for i in range(0, len(images), 5)),
    model_filename="model.pdmodel",
    params_filename="model.pdiparams",
    save_model_filename="model.pdmodel",
    save_params_filename="model.pdiparams",
    batch_size=5,
    batch_nums=2,
    algo="abs_max",
    onnx_format=True,
)
"""


def run(args: list[str | Path], env: dict[str, str]) -> None:
    result = subprocess.run([*map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_paddleslim_quantized_model_serves_like_ours(tmp_path: Path) -> None:
    if not (SIDE / "paddleslim").is_dir():
        pytest.skip(f"PaddleSlim is not installed in {SIDE} (make test installs it)")
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}
    fp32 = tmp_path / "fp32"
    run([sys.executable, "-m", "pdserve", "export", "--arch", "mobilenet_v3_small", "--output", fp32], env)
    rows = sample_list(10)
    listing = tmp_path / "calib.txt"
    listing.write_text("".join(f"{p} {label}\n" for p, label in rows))

    ours = tmp_path / "ours"
    run(
        [sys.executable, "-m", "pdserve", "quantize", "--model", fp32, "--output", ours, "--label-list", listing,
         "--data-root", "/", "--algo", "abs_max", "--batch-size", "5", "--batch-nums", "2",
         # Paddle's stock recipe, as PaddleSlim runs it: batch norm unfolded, ReLU6 scales calibrated.
         "--no-fuse-bn", "--unbounded-scales"],
        env,
    )  # fmt: skip

    # PaddleSlim, on the same ten images preprocessed the same way, in the same batches.
    spec = load_model_config(fp32).preprocessing
    images = np.stack([load_and_preprocess(p.read_bytes(), spec, 10**9) for p, _ in rows])
    np.save(tmp_path / "calib.npy", images)
    slim = tmp_path / "slim"
    slim_env = {**env, "PYTHONPATH": str(SIDE)}
    run([sys.executable, "-c", SLIM_SCRIPT, fp32 / "1", slim / "1", tmp_path / "calib.npy"], slim_env)
    shutil.copyfile(ours / "config.yaml", slim / "config.yaml")

    # Statistics collected once and thresholds set by pdserve give PaddleSlim's weights and scales exactly.
    assert (ours / "1" / "model.pdiparams").read_bytes() == (slim / "1" / "model.pdiparams").read_bytes()
    ours_out = LocalModel.open(ours).predictor().run(images)
    slim_out = LocalModel.open(slim).predictor().run(images)
    np.testing.assert_allclose(slim_out, ours_out, atol=1e-5)

    with running_app(tmp_path, ready=True) as server:
        models = {m["name"]: m for m in httpx.get(f"{server.url}/models").json()["models"]}
        assert models["slim"]["precision"] == "int8"
        photo = rows[0][0].read_bytes()
        answers = [
            httpx.post(
                f"{server.url}/predict?model={name}", content=photo, headers={"Content-Type": "image/jpeg"}, timeout=60
            ).json()["predictions"]
            for name in ("slim", "ours")
        ]
    assert [p["class_id"] for p in answers[0]] == [p["class_id"] for p in answers[1]]
