from __future__ import annotations

from pathlib import Path

import pytest

from pdserve.errors import ModelLoadError, ModelNotFound, ModelNotReady
from pdserve.metrics import Metrics
from pdserve.repository import ModelRepository
from pdserve.runtime.process import WorkerOptions


def model(root: Path, name: str) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.yaml").write_text("max_batch_size: 2\n")
    for f in ("model.pdmodel", "model.pdiparams"):
        (root / name / "1" / f).write_bytes(b"")


def repo(root: Path, default: str | None = None) -> ModelRepository:
    r = ModelRepository(root, Metrics(), WorkerOptions(1.0))
    r.scan(default)
    return r


def test_repository_file_names_the_default_and_settings_override_it(tmp_path: Path) -> None:
    model(tmp_path, "a")
    model(tmp_path, "b")
    assert repo(tmp_path).default_model is None
    (tmp_path / "repository.yaml").write_text("default_model: b\n")
    assert repo(tmp_path).default_model == "b"
    assert repo(tmp_path, "a").default_model == "a"


def test_without_a_default_a_request_must_name_one_of_several(tmp_path: Path) -> None:
    model(tmp_path, "a")
    model(tmp_path, "b")
    with pytest.raises(ModelNotFound, match=r"name a model: \?model=<name>, one of \['a', 'b'\]"):
        repo(tmp_path).get(None, None)
    (tmp_path / "repository.yaml").write_text("default_model: b\n")
    with pytest.raises(ModelNotReady, match="'b' version 1 is pending"):  # found, not loaded yet
        repo(tmp_path).get(None, None)


def test_a_default_that_does_not_exist_refuses_to_start(tmp_path: Path) -> None:
    model(tmp_path, "a")
    with pytest.raises(ModelLoadError, match=r"default model 'zz' is not in .*; it has \['a'\]"):
        repo(tmp_path, "zz")
    (tmp_path / "repository.yaml").write_text("default: a\n")
    with pytest.raises(ModelLoadError, match=r"unknown fields \['default'\]"):
        repo(tmp_path)


def test_versions_policy(tmp_path: Path) -> None:
    model(tmp_path, "a")
    (tmp_path / "a" / "3").mkdir()
    for f in ("model.pdmodel", "model.pdiparams"):
        (tmp_path / "a" / "3" / f).write_bytes(b"")
    assert list(repo(tmp_path).models["a"].versions) == [3]  # latest by default
    (tmp_path / "a" / "config.yaml").write_text("versions: all\n")
    assert sorted(repo(tmp_path).models["a"].versions) == [1, 3]
    (tmp_path / "a" / "config.yaml").write_text("versions: [2]\n")
    entry = repo(tmp_path).models["a"]
    assert entry.error is not None
    assert "field 'versions': no folder for [2]" in entry.error
