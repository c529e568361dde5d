from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pdserve.model_config import ModelConfig
from pdserve.repository import Overrides


def test_no_overrides_keep_the_config() -> None:
    config = ModelConfig(device="cpu")
    assert Overrides().apply(config) is config


def test_device_and_trt_cache_override_every_model() -> None:
    config = Overrides(device="gpu:1", trt_cache_dir=Path("/cache")).apply(ModelConfig(max_batch_size=4))
    assert config.device == "gpu:1"
    assert config.tensorrt.cache_dir == "/cache"
    assert config.tensorrt.use_static is True
    assert config.max_batch_size == 4


def test_an_invalid_override_is_refused_like_a_bad_config() -> None:
    with pytest.raises(ValidationError, match="gpu:N"):
        Overrides(device="tpu").apply(ModelConfig())
