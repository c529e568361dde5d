"""scripts/check_prometheus.py for real: Debian's Prometheus scrapes a live pdserve with the shipped
configuration, and every dashboard and alert expression returns series. Skipped without prometheus
(apt-get install -y prometheus), which CI machines may lack; `make prometheus-check` runs the same."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, sample_dir

pytestmark = pytest.mark.timeout(600)


def test_dashboards_and_alerts_return_series_from_a_live_server(tmp_path: Path) -> None:
    missing = [tool for tool in ("prometheus", "promtool") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install -y prometheus)")
    sample_dir()
    out = tmp_path / "check.json"
    command = [sys.executable, str(ROOT / "scripts" / "check_prometheus.py"), "--load-s", "10", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    sources = [e["source"] for e in result["expressions"]]
    assert sum("alert " in s for s in sources) >= 6
    assert sum("pdserve.json" in s for s in sources) >= 10
    assert all(e["error"] is None and e["series"] > 0 for e in result["expressions"])
    assert result["rules_healthy"] == sum("alert " in s or "record " in s for s in sources)
