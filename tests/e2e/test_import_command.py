"""``pdserve import``: published folders into a repository, run as a user runs it, then served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, running_app

pytestmark = pytest.mark.timeout(300)

EXPORT = """
import sys
from pathlib import Path
from pdserve.pipeline import toy_detector
toy_detector.export(Path(sys.argv[1]) / "model", size=64)
"""

INFER_CFG = """\
mode: paddle
draw_threshold: 0.4
metric: COCO
arch: PicoDet
Preprocess:
- interp: 1
  keep_ratio: false
  target_size: [64, 64]
  type: Resize
- is_scale: true
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  type: NormalizeImage
- type: Permute
label_list: [person, bicycle, car, dog]
"""


def pdserve(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLAGS_enable_pir_api"}
    result = subprocess.run(
        [sys.executable, "-m", "pdserve", *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PaddleDetection-style folder: model.json + model.pdiparams (Paddle 3) + infer_cfg.yml."""
    folder = tmp_path_factory.mktemp("picodet_infer")
    script = folder.parent / "export_detector.py"
    script.write_text(EXPORT)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, str(script), str(folder)], check=True, env=env, capture_output=True)
    (folder / "infer_cfg.yml").write_text(INFER_CFG)
    return folder


def test_import_copies_as_the_next_version_prints_the_config_and_serves(published: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = json.loads(pdserve("import", published, "--name", "picodet", "--model-repo", repo, "--json").stdout)
    assert first["version"] == 1
    assert (first["program"], first["format"], first["published"], first["labels"]) == (
        "model.json",
        "pir",
        "infer_cfg.yml",
        4,
    )
    assert first["config"]["kind"] == "detection"
    assert first["config"]["detection"]["score_threshold"] == 0.4
    assert (repo / "picodet" / "1" / "model.json").is_file()
    assert not (repo / "picodet" / "config.yaml").exists()  # the folder configures itself

    second = pdserve("import", published, "--name", "picodet", "--model-repo", repo, "--link")
    assert "linked" in second.stdout
    assert "kind: detection" in second.stdout
    assert (repo / "picodet" / "2").is_symlink()

    with running_app(repo) as server:
        models = httpx.get(f"{server.url}/models").json()["models"]
        assert models[0]["kind"] == "detection"
        assert models[0]["versions"][0]["format"] == "pir"


def test_a_folder_pdserve_cannot_reproduce_is_refused_and_nothing_is_written(published: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in published.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "infer_cfg.yml").write_text(INFER_CFG.replace("type: Permute", "type: Permute\n- type: TopDownEvalAffine"))
    result = pdserve("import", bad, "--name", "bad", "--model-repo", tmp_path / "repo", ok=False)
    assert result.returncode == 2
    assert "TopDownEvalAffine" in result.stderr
    assert not (tmp_path / "repo" / "bad" / "1").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = pdserve("import", empty, "--name", "x", "--model-repo", tmp_path / "repo", ok=False)
    assert "model.json" in result.stderr
