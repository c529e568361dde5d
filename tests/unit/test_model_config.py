from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pdserve.errors import ModelConfigError
from pdserve.model_config import ModelConfig, load_model_config

REPO_MODEL = Path(__file__).resolve().parents[2] / "model_repo" / "efficientnet_lite0"


def write(tmp_path: Path, doc: object) -> Path:
    (tmp_path / "config.yaml").write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return tmp_path


def test_the_shipped_config_is_valid() -> None:
    config = load_model_config(REPO_MODEL)
    assert config.input.shape == (3, 224, 224)
    assert config.preprocessing.mean == (127.0, 127.0, 127.0)
    assert config.precision == "fp32"


@pytest.mark.parametrize(
    ("doc", "field", "fragment"),
    [
        ({"max_batch_size": 0}, "max_batch_size", "greater than 0"),
        ({"precision": "int4"}, "precision", "'fp32', 'fp16' or 'int8'"),
        ({"device": "cuda"}, "device", "gpu:N"),
        ({"instances": "two"}, "instances", "integer"),
        ({"tensorrt": {"workspace_size": -1}}, "tensorrt.workspace_size", "greater than 0"),
        ({"input": {"shape": [3, 224]}}, "input.shape", ""),
        ({"unknown_field": 1}, "unknown_field", "Extra inputs"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, doc: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(ModelConfigError) as info:
        load_model_config(write(tmp_path, doc))
    message = info.value.message
    assert str(tmp_path / "config.yaml") in message
    assert f"field '{field}" in message
    assert fragment in message


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"config.yaml: missing"):
        load_model_config(tmp_path)
    with pytest.raises(ModelConfigError, match="not valid YAML"):
        load_model_config(write(tmp_path, "input: [unclosed"))
    with pytest.raises(ModelConfigError, match="must be a mapping"):
        load_model_config(write(tmp_path, "- a list"))


def test_labels_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"field 'labels': file .*names.txt not found"):
        load_model_config(write(tmp_path, {"labels": "names.txt"}))


def test_crop_must_match_the_input() -> None:
    with pytest.raises(ValueError, match=r"crop \(256\) must equal input H and W"):
        ModelConfig.model_validate({"preprocessing": {"crop": 256}})


def test_padded_batch_sizes_default_to_powers_of_two_and_the_maximum() -> None:
    assert ModelConfig(max_batch_size=8).padded_batch_sizes == (1, 2, 4, 8)
    assert ModelConfig(max_batch_size=12).padded_batch_sizes == (1, 2, 4, 8, 12)
    assert ModelConfig(max_batch_size=1).padded_batch_sizes == (1,)
    assert ModelConfig(max_batch_size=6, batch_sizes=(6, 2)).padded_batch_sizes == (2, 6)
    with pytest.raises(ValueError, match="largest of batch_sizes"):
        ModelConfig(max_batch_size=8, batch_sizes=(1, 4))


def test_gpu_id() -> None:
    assert ModelConfig(device="cpu").gpu_id is None
    assert ModelConfig(device="gpu:1").gpu_id == 1


def test_batches_are_trimmed_on_cpu_image_models_unless_configured() -> None:
    assert ModelConfig().trims_batches
    assert not ModelConfig(device="gpu:0").trims_batches
    assert not ModelConfig(trim_batches=False).trims_batches
    assert ModelConfig(device="gpu:0", trim_batches=True).trims_batches
