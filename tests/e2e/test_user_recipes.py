"""The README's curl recipes and the locust recipe, executed against a live server so they stay true."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import MODEL_REPO, ROOT, ServerThread, running_app, sample_list

pytestmark = pytest.mark.timeout(300)
README_URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def live() -> Iterator[ServerThread]:
    with running_app(MODEL_REPO) as server:
        yield server


def recipes(marker: str) -> list[str]:
    """Shell commands of the code blocks that follow ``<!-- marker -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    commands: list[str] = []
    for block in re.findall(rf"<!-- {marker} -->\s*```sh\n(.*?)```", text, re.DOTALL):
        joined = block.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def run(command: str, cwd: Path, url: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.replace(README_URL, url)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_curl_recipes(live: ServerThread, tmp_path: Path) -> None:
    rows = sample_list(3)
    for name, (path, _) in zip(("photo.jpg", "a.jpg", "b.jpg"), rows, strict=True):
        shutil.copyfile(path, tmp_path / name)
    commands = recipes("recipe: curl")
    assert len(commands) >= 7, commands
    for command in commands:
        result = run(command, tmp_path, live.url)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        out = result.stdout
        if "/metrics" in command:
            assert "pdserve_requests_total" in out
            continue
        body = json.loads(out)
        assert "error" not in body, f"{command}\n{out}"
        if "predict" in command:
            assert "predictions" in body or len(body["results"]) == 2
        elif "/readyz" in command:
            assert body["ready"] is True
        elif "/models" in command:
            assert body["models"][0]["state"] == "READY"


def test_locust_recipe(live: ServerThread, tmp_path: Path) -> None:
    (command,) = recipes("recipe: locust")
    assert command.startswith("locust -f locustfile.py")
    # The README's run, made short: 8 s, and a CSV to read the results from.
    locust = str(Path(sys.executable).parent / "locust")
    short = re.sub(r"--run-time \S+", "--run-time 8s", command).replace("locust ", f"{locust} ", 1)
    short += f" --csv {tmp_path / 'stats'} --only-summary --exit-code-on-error 1 --stop-timeout 10"
    result = subprocess.run(
        ["bash", "-c", short.replace(README_URL, live.url)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "stats_stats.csv").open() as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    total = stats["Aggregated"]
    assert int(total["Request Count"]) > 20
    assert int(total["Failure Count"]) == 0
    for name in ("predict multipart", "predict raw", "predict base64", "predict batch of 4"):
        assert int(stats[name]["Request Count"]) > 0, name


def test_tritonclient_recipe(live: ServerThread, tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"<!-- recipe: tritonclient -->\s*```python\n(.*?)```", text, re.DOTALL)
    shutil.copyfile(sample_list(1)[0][0], tmp_path / "photo.jpg")
    script = tmp_path / "recipe.py"
    script.write_text(code.replace("127.0.0.1:8000", f"127.0.0.1:{live.port}"))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"\[\[b'0\.\d+:0:tench'", result.stdout), result.stdout  # the first sample photo is a tench
