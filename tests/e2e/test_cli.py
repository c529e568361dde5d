"""The ``pdserve`` offline commands, run as a user runs them, on small real inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pdserve.model_config import load_model_config
from tests.helpers import DEFAULT_MODEL, MODEL_REPO, ROOT, running_app, sample_dir

pytestmark = pytest.mark.timeout(900)


def pdserve(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLAGS_enable_pir_api"}  # the CLI must set it itself
    result = subprocess.run(
        [sys.executable, "-m", "pdserve", *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def small_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty sample photos, listed with paths relative to the sample folder."""
    lines = (sample_dir() / "val_list.txt").read_text().splitlines()[:20]
    path = tmp_path_factory.mktemp("data") / "small_list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "mobilenet_v3_small"
    result = pdserve("export", "--arch", "mobilenet_v3_small", "--output", out, "--json")
    assert json.loads(result.stdout) == {
        "model_dir": str(out),
        "version": 1,
        "arch": "mobilenet_v3_small",
        "random_weights": True,
    }
    return out


def test_export_writes_a_servable_repository_model(exported: Path) -> None:
    assert (exported / "1" / "model.pdmodel").is_file()
    assert (exported / "1" / "model.pdiparams").is_file()
    config = load_model_config(exported)
    assert config.random_weights is True
    assert config.input.shape == (3, 224, 224)
    with running_app(exported.parent) as server:
        info = httpx.get(f"{server.url}/models/mobilenet_v3_small").json()
        assert info["random_weights"] is True
        photo = next((sample_dir() / "images").iterdir()).read_bytes()
        r = httpx.post(f"{server.url}/predict", content=photo, headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200
        assert abs(sum(p["score"] for p in r.json()["predictions"][:1000])) <= 1.0001


def test_export_a_second_version_and_refuse_bad_weights(exported: Path, tmp_path: Path) -> None:
    result = pdserve("export", "--arch", "mobilenet_v3_small", "--output", exported, "--json")
    assert json.loads(result.stdout)["version"] == 2
    (tmp_path / "w.pdparams").write_bytes(b"")
    bad = pdserve("export", "--arch", "resnet50", "--output", tmp_path / "r", "--weights", tmp_path / "nope", ok=False)
    assert bad.returncode == 2
    assert "weights file" in bad.stderr
    assert "not found" in bad.stderr


def test_quantize_evaluate_and_serve_int8(exported: Path, small_list: Path, tmp_path: Path) -> None:
    int8 = tmp_path / "mobilenet_v3_small_int8"
    result = pdserve(
        "quantize",
        "--model-dir",
        exported,
        "--version",
        "1",
        "--quantize-model-path",
        int8,
        "--label-list",
        small_list,
        "--data-root",
        sample_dir(),
        "--algo",
        "abs_max",
        "--batch-size",
        "5",
        "--batch-nums",
        "2",
        "--json",
    )
    record = json.loads(result.stdout)  # progress output went to stderr: stdout is clean JSON
    assert record["algo"] == "abs_max"
    assert record["images"] == 10
    config = load_model_config(int8)
    assert config.precision == "int8"
    assert config.calibration is not None
    assert {"algo", "images", "source", "date", "tools"} <= set(config.calibration)
    assert config.calibration["tools"]["paddle"].startswith("3.3")

    table = pdserve(
        "evaluate", "--models", exported, int8, "--label-list", small_list, "--data-root", sample_dir(), "--json"
    )
    rows = json.loads(table.stdout)
    assert [(r["model"], r["precision"], r["images"]) for r in rows] == [
        ("mobilenet_v3_small", "fp32", 20),
        ("mobilenet_v3_small_int8", "int8", 20),
    ]
    assert rows[0]["agreement"] is None
    assert 0 <= rows[1]["agreement"] <= 1
    human = pdserve("evaluate", "--models", exported, int8, "--label-list", small_list, "--data-root", sample_dir())
    assert "mobilenet_v3_small_int8" in human.stdout
    assert "top-1" in human.stdout


def test_preprocess_then_evaluate_from_the_binary_file(small_list: Path, tmp_path: Path) -> None:
    model = MODEL_REPO / DEFAULT_MODEL
    out = tmp_path / "val.bin"
    pdserve(
        "preprocess",
        "--model",
        model,
        "--data-dir",
        sample_dir(),
        "--label-list",
        small_list,
        "--output-file",
        out,
        "--data-dim",
        "224",
    )
    assert out.stat().st_size == 8 + 20 * 3 * 224 * 224 * 4 + 20 * 8
    from_file = json.loads(pdserve("evaluate", "--models", model, "--data-file", out, "--json").stdout)
    from_images = json.loads(
        pdserve("evaluate", "--models", model, "--label-list", small_list, "--data-root", sample_dir(), "--json").stdout
    )
    assert from_file[0]["top1"] == from_images[0]["top1"] >= 0.75
    assert from_file[0]["top5"] == from_images[0]["top5"]
    wrong = pdserve("preprocess", "--model", model, "--data-dir", sample_dir(), "--label-list", small_list,
                    "--output-file", out, "--data-dim", "299", ok=False)  # fmt: skip
    assert wrong.returncode == 2
    assert "differs from the model's input size 224" in wrong.stderr


def test_bench_reports_every_section(small_list: Path) -> None:
    result = pdserve(
        "bench", "--models", MODEL_REPO / DEFAULT_MODEL, "--batch-sizes", "1", "2", "--iterations", "3",
        "--label-list", small_list, "--data-root", sample_dir(), "--limit", "4", "--json",
    )  # fmt: skip
    reports = json.loads(result.stdout)
    assert [r["data"]["batch_size"] for r in reports] == [1, 2]
    report = reports[0]
    assert set(report) == {"environment", "configuration", "model", "data", "performance"}
    assert report["environment"]["paddle"].startswith("3.3")
    assert report["configuration"]["onednn"] is True
    assert report["model"]["precision"] == "fp32"
    perf = report["performance"]
    assert perf["images_per_s"] > 0
    assert perf["p50_ms"] <= perf["p99_ms"]
    assert perf["cpu_rss_mib"] > 0
    human = pdserve("bench", "--models", MODEL_REPO / DEFAULT_MODEL, "--batch-sizes", "1", "--iterations", "2")
    assert "environment" in human.stdout
    assert "performance.images_per_s" in human.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["quantize", "--model", "model_repo/efficientnet_lite0", "--output", "/tmp/x", "--data-dir", "/no/such"],
         "image folder /no/such not found"),
        (["quantize", "--model", "model_repo/efficientnet_lite0", "--output", "/tmp/x", "--algo", "KLD",
          "--data-dir", "."], "invalid choice: 'KLD'"),
        (["evaluate", "--models", "model_repo/nope", "--label-list", "x.txt"],
         "model folder model_repo/nope not found"),
        (["calibrate", "--model", "model_repo/efficientnet_lite0", "--label-list", "/no/such/list.txt"],
         "calibrate needs a CUDA build of Paddle"),
        (["export", "--arch", "vgg99", "--output", "/tmp/x"], "invalid choice: 'vgg99'"),
    ],
)  # fmt: skip
def test_errors_are_clear_and_exit_non_zero(args: list[str], message: str) -> None:
    result = pdserve(*args, ok=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_malformed_list_line_is_reported_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("images/n01440764_tench.JPEG 0\nimages/oops.JPEG\n")
    result = pdserve("evaluate", "--models", MODEL_REPO / DEFAULT_MODEL, "--label-list", bad, ok=False)
    assert result.returncode == 2
    assert "bad.txt:2: expected '<image path> <class id>'" in result.stderr


def test_export_the_pretrained_efficientnet_importer(small_list: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the convert extra (torch) is not installed")
    out = tmp_path / "efficientnet_lite0"
    result = pdserve("export", "--arch", "efficientnet_lite0", "--pretrained", "--output", out, "--json")
    assert json.loads(result.stdout)["random_weights"] is False
    config = load_model_config(out)
    assert config.preprocessing.mean == (127.0, 127.0, 127.0)  # this model's own normalisation
    table = pdserve(
        "evaluate", "--models", MODEL_REPO / DEFAULT_MODEL, out, "--label-list", small_list,
        "--data-root", sample_dir(), "--json",
    )  # fmt: skip
    shipped, exported = json.loads(table.stdout)
    assert exported["top1"] == shipped["top1"] >= 0.75
    assert exported["agreement"] == 1.0


def test_the_three_sample_lists_are_disjoint_and_cover_the_sample() -> None:
    lists = {
        name: (ROOT / "data" / f"imagenet-sample-{name}.txt").read_text().split("\n")
        for name in ("calibration", "selection", "report")
    }
    sets = {name: {line for line in lines if line} for name, lines in lists.items()}
    assert [len(s) for s in sets.values()] == [200, 150, 150]
    assert not sets["calibration"] & sets["selection"]
    assert not sets["calibration"] & sets["report"]
    assert not sets["selection"] & sets["report"]
    every = {line for line in (sample_dir() / "val_list.txt").read_text().splitlines() if line}
    assert set().union(*sets.values()) == every


def test_evaluate_warns_and_strict_refuses_on_calibration_images() -> None:
    int8 = MODEL_REPO / f"{DEFAULT_MODEL}_int8"
    data = ("--data-root", sample_dir(), "--limit", "4")
    calib = ROOT / "data" / "imagenet-sample-calibration.txt"
    warned = pdserve("evaluate", "--models", int8, "--label-list", calib, *data)
    assert f"WARNING: 4 of 4 evaluation images calibrated {DEFAULT_MODEL}_int8" in warned.stderr
    refused = pdserve("evaluate", "--models", int8, "--label-list", calib, *data, "--strict", ok=False)
    assert refused.returncode == 2
    assert "not a measurement" in refused.stderr
    report = ROOT / "data" / "imagenet-sample-report.txt"
    clean = pdserve("evaluate", "--models", int8, "--label-list", report, *data, "--strict")
    assert "WARNING" not in clean.stderr


def test_the_max_drop_gate(exported: Path) -> None:
    report = ("--label-list", ROOT / "data" / "imagenet-sample-report.txt", "--data-root", sample_dir())
    fp32 = MODEL_REPO / DEFAULT_MODEL
    passed = pdserve(
        "evaluate", "--baseline", fp32, "--models", fp32, *report, "--limit", "8", "--max-drop", "0", "--json"
    )
    rows = json.loads(passed.stdout)
    assert rows[1]["gained"] == rows[1]["lost"] == 0  # a model against itself: no flips
    # random weights against the trained model: a drop far past half a point, and a one-line reason
    failed = pdserve(
        "evaluate", "--baseline", fp32, "--models", exported, *report, "--limit", "8", "--max-drop", "0.5", ok=False
    )
    assert failed.returncode == 1
    reason = failed.stderr.strip().splitlines()[-1]
    assert reason.startswith("pdserve evaluate: error: mobilenet_v3_small top-1")
    assert "--max-drop 0.5" in reason


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny_cnn"
    pdserve("export", "--arch", "tiny_cnn", "--output", out, "--num-classes", "1000")
    return out


def _split_lists(tmp_path: Path) -> tuple[Path, Path]:
    lines = (sample_dir() / "val_list.txt").read_text().splitlines()
    calibration, evaluation = tmp_path / "cal.txt", tmp_path / "eval.txt"
    calibration.write_text("\n".join(lines[:10]) + "\n")
    evaluation.write_text("\n".join(lines[10:26]) + "\n")
    return calibration, evaluation


def test_search_meets_an_easy_target_without_sensitivity(tiny: Path, tmp_path: Path) -> None:
    calibration, evaluation = _split_lists(tmp_path)
    out = tmp_path / "tiny_int8"
    result = pdserve(
        "quantize", "--model", tiny, "--output", out, "--label-list", calibration, "--data-root", sample_dir(),
        "--batch-size", "5", "--target-drop", "100", "--eval-list", evaluation, "--algos", "abs_max", "hist",
        "--json",
    )  # fmt: skip
    record = json.loads(result.stdout)
    assert record["search"]["met"] is True
    report = json.loads((out / "search" / "report.json").read_text())
    names = [c["name"] for c in report["candidates"]]
    assert {"abs_max", "hist0.999", "hist0.9999", "hist0.99999"} <= set(names)
    assert any(c["stage"] == "option" for c in report["candidates"])  # per-tensor weights, adaround, ...
    assert report["sensitivity"] == []  # the target was met: no analysis
    assert (out / "search" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    config = load_model_config(out)
    assert config.precision == "int8"
    assert config.calibration is not None
    assert config.calibration["recipe"] == report["chosen"]["recipe"]
    assert config.calibration["search"]["evaluation"] == str(evaluation)
    # The chosen recipe rebuilds the model from the config it was recorded in.
    again = tmp_path / "again"
    pdserve("quantize", "--model", tiny, "--output", again, "--label-list", calibration, "--data-root",
            sample_dir(), "--batch-size", "5", "--recipe", out / "config.yaml")  # fmt: skip
    assert (again / "1" / "model.pdiparams").read_bytes() == (out / "1" / "model.pdiparams").read_bytes()
    # ... with the validation set every worker runs at load (pdserve/runtime/validation.py), the same bytes
    assert config.calibration["validation"]["images"] == 10  # all the calibration images, up to 32
    assert (again / "1" / "validation.npz").read_bytes() == (out / "1" / "validation.npz").read_bytes()


def test_search_that_cannot_meet_its_target_falls_back_layer_by_layer_and_says_so(tiny: Path, tmp_path: Path) -> None:
    calibration, evaluation = _split_lists(tmp_path)
    out = tmp_path / "tiny_int8"
    result = pdserve(
        "quantize", "--model", tiny, "--output", out, "--label-list", calibration, "--data-root", sample_dir(),
        "--batch-size", "5", "--target-drop", "-100", "--eval-list", evaluation, "--algos", "abs_max",
        "--max-fallback", "2", ok=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "no recipe kept top-1 within -100 points" in result.stderr
    report = json.loads((out / "search" / "report.json").read_text())
    assert [s["op_type"] for s in report["sensitivity"]] == ["conv2d", "depthwise_conv2d", "conv2d", "matmul_v2"]
    # Layers go to FP32 most sensitive first, one more each time, only those whose FP32 copy helped,
    # at most --max-fallback of them.
    helping = sorted((s for s in report["sensitivity"] if s["gain"] > 0), key=lambda s: -s["gain"])[:2]
    fallbacks = [c for c in report["candidates"] if c["stage"] == "fallback"]
    assert [c["recipe"]["fp32_layers"] for c in fallbacks] == [
        [s["layer"] for s in helping[:k]] for k in range(1, len(helping) + 1)
    ]
    assert f"no recipe met drop <= -100.0 with up to {len(helping)} layers in FP32" in report["notes"]
    assert "most sensitive layers" in (out / "search" / "report.txt").read_text()
    assert (out / "1" / "model.pdmodel").is_file()  # the closest candidate is written all the same


def test_search_warns_about_and_strict_refuses_calibration_images_in_the_eval_list(tiny: Path, tmp_path: Path) -> None:
    calibration, _ = _split_lists(tmp_path)
    refused = pdserve(
        "quantize", "--model", tiny, "--output", tmp_path / "x", "--label-list", calibration, "--data-root",
        sample_dir(), "--target-drop", "1", "--eval-list", calibration, "--strict", ok=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "10 of 10 evaluation images calibrated the model being quantized" in refused.stderr
    assert not (tmp_path / "x").exists()
    needs_target = pdserve("quantize", "--model", tiny, "--output", tmp_path / "y", "--label-list", calibration,
                           "--data-root", sample_dir(), "--eval-list", calibration, ok=False)  # fmt: skip
    assert needs_target.returncode == 2
    assert "add --target-drop" in needs_target.stderr


def test_the_shipped_int8_model_was_chosen_on_the_selection_split_and_calibrated_apart() -> None:
    int8 = MODEL_REPO / f"{DEFAULT_MODEL}_int8"
    config = load_model_config(int8)
    assert config.calibration is not None
    report = json.loads((int8 / "search" / "report.json").read_text())
    assert config.calibration["recipe"] == report["chosen"]["recipe"]
    assert config.calibration["recipe_source"] == f"{int8.relative_to(ROOT)}/search/report.json"  # make int8-model
    assert report["met"] is True
    calibrated = {line.split()[0] for line in (int8 / "calibration_images.txt").read_text().splitlines()}
    listed = (ROOT / "data" / "imagenet-sample-calibration.txt").read_text().split("\n")
    assert calibrated == {line.split()[0].rsplit("/", 1)[-1] for line in listed if line}
    chose_on = (ROOT / "data" / "imagenet-sample-selection.txt").read_text()
    assert not any(name in chose_on for name in calibrated)


def test_search_within_a_time_budget_keeps_the_best_so_far(tiny: Path, tmp_path: Path) -> None:
    calibration, evaluation = _split_lists(tmp_path)
    out = tmp_path / "tiny_int8"
    result = pdserve(
        "quantize", "--model", tiny, "--output", out, "--label-list", calibration, "--data-root", sample_dir(),
        "--batch-size", "5", "--target-drop", "100", "--eval-list", evaluation, "--time-budget-s", "0", "--json",
    )  # fmt: skip
    assert json.loads(result.stdout)["search"]["candidates"] == 1
    report = json.loads((out / "search" / "report.json").read_text())
    assert report["notes"] == ["time budget reached after 1 candidate; chose among those"]
    assert report["chosen"]["name"] == "hist0.999"


def test_search_analyses_sensitivity_on_request_even_when_the_target_is_met(tiny: Path, tmp_path: Path) -> None:
    calibration, evaluation = _split_lists(tmp_path)
    out = tmp_path / "tiny_int8"
    pdserve(
        "quantize", "--model", tiny, "--output", out, "--label-list", calibration, "--data-root", sample_dir(),
        "--batch-size", "5", "--target-drop", "100", "--eval-list", evaluation, "--algos", "abs_max",
        "--sensitivity",
    )  # fmt: skip
    report = json.loads((out / "search" / "report.json").read_text())
    assert report["met"] is True
    assert len(report["sensitivity"]) == 4
    assert not [c for c in report["candidates"] if c["stage"] == "fallback"]  # met: nothing kept in FP32
