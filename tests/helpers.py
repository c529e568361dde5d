"""Helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
import yaml

from pdserve.pipeline.served import free_port as free_port  # the tests import it from here

ROOT = Path(__file__).resolve().parents[1]
MODEL_REPO = ROOT / "model_repo"
DEFAULT_MODEL = "efficientnet_lite0"
T = TypeVar("T")


def sample_dir() -> Path:
    """The ImageNet sample; tests skip without it, except in CI where its absence is a failure."""
    path = Path(os.environ.get("PDSERVE_SAMPLE_DATA", ROOT.parent / "shared" / "data" / "imagenet-sample"))
    if not (path / "val_list.txt").is_file():
        message = f"ImageNet sample not found at {path} (set PDSERVE_SAMPLE_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def sample_list(limit: int | None = None) -> list[tuple[Path, int]]:
    root = sample_dir()
    rows = []
    for line in (root / "val_list.txt").read_text().splitlines():
        if line.strip():
            rel, label = line.split()
            rows.append((root / rel, int(label)))
    return rows[:limit]


def sample_split(name: str) -> list[tuple[Path, int]]:
    """One of the committed disjoint lists, data/imagenet-sample-{calibration,selection,report}.txt."""
    root = sample_dir()
    rows = []
    for line in (ROOT / "data" / f"imagenet-sample-{name}.txt").read_text().splitlines():
        if line.strip():
            rel, label = line.split()
            rows.append((root / rel, int(label)))
    return rows


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Re-check a condition until it holds; fail naming it after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def make_repo(root: Path, overrides: dict[str, Any] | None = None, name: str = DEFAULT_MODEL) -> Path:
    """A model repository holding the real EfficientNet-Lite0 (linked, not copied) with config overrides."""
    src = MODEL_REPO / DEFAULT_MODEL
    dst = root / name
    dst.mkdir(parents=True)
    config = yaml.safe_load((src / "config.yaml").read_text())
    config.update(overrides or {})
    (dst / "config.yaml").write_text(yaml.safe_dump(config))
    (dst / "labels.txt").symlink_to(src / "labels.txt")
    (dst / "1").symlink_to(src / "1", target_is_directory=True)
    return root


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text output (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(\{.*\})?\s+(\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


class ServerThread:
    """A real uvicorn server on 127.0.0.1 in a thread of the test process."""

    def __init__(self, app: Any) -> None:
        from pdserve.server import DrainingServer

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        service = app.state.service
        self.server = DrainingServer(config, service.lifecycle, service.settings.drain_delay_s)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "server thread did not stop"

    def begin_drain(self) -> None:
        """What SIGTERM does to ``pdserve serve`` (signals reach only the main thread)."""
        loop = self.server._loop
        assert loop is not None
        loop.call_soon_threadsafe(self.server.begin_drain)

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            return httpx.get(f"{self.url}/readyz").status_code == 200

        wait_until(ready, timeout, "/readyz to return 200")


@contextmanager
def running_app(repo: Path, ready: bool = True, **settings: Any) -> Iterator[ServerThread]:
    from pdserve.factory import create_app
    from pdserve.settings import Settings

    app = create_app(Settings(model_repo=repo, **settings))
    with ServerThread(app) as server:
        if ready:
            server.wait_ready()
        yield server
