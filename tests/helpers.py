"""Helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from pdserve.pipeline import sample
from pdserve.pipeline.sample import DEFAULT_MODEL as DEFAULT_MODEL
from pdserve.pipeline.sample import MODEL_REPO as MODEL_REPO
from pdserve.pipeline.sample import ROOT as ROOT
from pdserve.pipeline.sample import SampleMissing
from pdserve.pipeline.served import free_port as free_port  # the tests import these from here
from pdserve.pipeline.served import make_repo as make_repo
from pdserve.pipeline.served import metric as metric

T = TypeVar("T")


def sample_dir() -> Path:
    """The ImageNet sample; tests skip without it, except in CI where its absence is a failure."""
    try:
        return sample.sample_dir()
    except SampleMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(exc.message)
        pytest.skip(exc.message)


def sample_list(limit: int | None = None) -> list[tuple[Path, int]]:
    sample_dir()
    return sample.sample_list(limit)


def sample_split(name: str) -> list[tuple[Path, int]]:
    """One of the committed disjoint lists, data/imagenet-sample-{calibration,selection,report}.txt."""
    sample_dir()
    return sample.sample_split(name)


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
