"""Schemathesis (``--checks all``) against a live server: the OpenAPI document says what the server does.

Every documented request shape must be accepted (schema-valid image bodies are real images, see
``tests/schemathesis/hooks.py``), every schema-violating one refused with a 4xx, every response
must match its documented status, schema and headers, and nothing may answer 500.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, ServerThread, make_repo, running_app

pytestmark = pytest.mark.timeout(600)
HERE = ROOT / "tests" / "schemathesis"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = make_repo(tmp_path_factory.mktemp("repo"), {"instances": 1})
    with running_app(repo) as s:
        yield s


def test_schemathesis_finds_nothing(server: ServerThread, tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "schemathesis"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "hooks", "PYTHONPATH": str(HERE), "NO_COLOR": "1"}
    args = [str(cli), "--config-file", str(HERE / "schemathesis.toml"), "run", f"{server.url}/openapi.json"]
    args += ["--checks", "all", "--max-examples", "25", "--seed", "20261122", "--no-color"]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
    assert "passed" in result.stdout
