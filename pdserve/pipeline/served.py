"""A ``pdserve serve`` process for benchmarks: started, awaited, measured over its process tree, stopped."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from pdserve.pipeline.bench import rss_mib
from pdserve.pipeline.sample import DEFAULT_MODEL, MODEL_REPO

ROOT = Path(__file__).resolve().parents[2]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def make_repo(root: Path, overrides: dict[str, object] | None = None, name: str = DEFAULT_MODEL) -> Path:
    """A model repository holding the shipped EfficientNet-Lite0 (linked, not copied) with config overrides."""
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLOCK_TICKS


class Served:
    def __init__(self, repo: Path, env: dict[str, str] | None = None, root: Path = ROOT) -> None:
        """``root``: the checkout whose pdserve runs (a worktree of another commit, for before/after)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "pdserve", "serve", "--port", str(self.port), "--model-repo", str(repo)]
        full_env = {**os.environ, "PDSERVE_LOG_LEVEL": "warning", **(env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="pdserve-bench-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"server did not become ready; see {self.log.name}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def rss_mib(self) -> float:
        return sum(rss_mib(p) for p in self.pids())

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self.log.close()  # the file stays for reading; only this handle goes

    def __enter__(self) -> Served:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
