"""``pdserve tune`` for real: every candidate served by a real ``pdserve serve`` and loaded by the load
generator, on a 4-layer model exported here and synthetic JPEGs (short loads: this checks the
behaviour, BENCHMARKS.md has the measurements)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pdserve.model_config import load_model_config
from tests.e2e.test_cli import pdserve

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(8):
        ok, jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (80 + 10 * i, 90, 3), np.uint8))
        assert ok
        (folder / f"{i}.jpg").write_bytes(jpeg.tobytes())
    return folder


@pytest.fixture
def model(tmp_path: Path) -> Path:
    out = tmp_path / "repo" / "tiny_cnn"
    pdserve("export", "--arch", "tiny_cnn", "--output", out, "--num-classes", "10")
    config = out / "config.yaml"
    config.write_text("# kept across tuning\n" + config.read_text())
    return out


def test_tune_measures_candidates_and_writes_the_best(model: Path, images: Path, tmp_path: Path) -> None:
    report_file = tmp_path / "tune.json"
    result = pdserve(
        "tune", model, "--data-dir", images, "--layouts", "1x1", "2x1", "--engines", "onednn", "openvino",
        "--batch-sizes", "2", "4", "--delays-ms", "0", "2", "--seconds", "1", "--clients", "4",
        "--write", "--report", report_file,
    )  # fmt: skip
    report = json.loads(report_file.read_text())
    stages = {c["stage"] for c in report["candidates"]}
    assert stages == {"as configured", "layout and engine", "batch limit", "queue delay"}
    measured = [c for c in report["candidates"] if c["ok"]]
    assert measured, report
    assert all(c["requests_per_s"] > 0 and c["p99_ms"] >= c["p50_ms"] > 0 for c in measured)
    assert all(c["reason"] for c in report["candidates"] if not c["ok"])  # a skipped candidate says why
    assert report["met"]
    best = report["best"]
    assert best["requests_per_s"] == max(c["requests_per_s"] for c in measured)
    assert f"best: {best['candidate']}" in result.stdout
    text = (model / "config.yaml").read_text()
    assert text.startswith("# kept across tuning\n")
    config = load_model_config(model)
    chosen = (config.instances, config.cpu_threads, config.max_batch_size, config.engine)
    assert chosen == (best["instances"], best["cpu_threads"], best["max_batch_size"], best["engine"])
    assert config.tuned is not None
    assert config.tuned["measured"]["requests_per_s"] == round(best["requests_per_s"], 1)


def test_tune_exits_1_when_no_candidate_meets_the_goal_and_writes_nothing(model: Path, images: Path) -> None:
    before = (model / "config.yaml").read_text()
    result = pdserve(
        "tune", model, "--data-dir", images, "--layouts", "1x1", "--engines", "onednn", "--batch-sizes", "2",
        "--delays-ms", "0", "--seconds", "1", "--clients", "2", "--p99-ms", "0.001", "--json",
        ok=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "no candidate met the goal" in result.stderr
    assert json.loads(result.stdout)["met"] is False
    assert (model / "config.yaml").read_text() == before
    assert yaml.safe_load(before).get("tuned") is None
