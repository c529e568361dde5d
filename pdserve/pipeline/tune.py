"""``pdserve tune``: measure serving configurations of one model on this machine and keep the best.

Each candidate is served for real: a temporary repository holding only this model, with the
candidate's instances, math threads, batch limit, queue delay and CPU engine written into its
config.yaml, a ``pdserve serve`` process on 127.0.0.1, and the load generator posting the given
images. A candidate counts only if it loads and answers every check image with the same top-1
as the model as configured (an engine whose outputs differ is refused, not chosen). The goal is
the highest throughput at ``clients`` closed-loop clients whose p99 stays under a limit, or the
lowest median latency of a single client.

The search is staged, as each stage's choices hardly depend on the next's: the layout
(instances x threads, every split of the cores) and engine first, then the batch limit, then the
queue delay. The winner is written into the model's config.yaml (comments kept) with a
``tuned:`` block saying what chose it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from pdserve.model_config import CONFIG_FILE, load_model_config, version_folders
from pdserve.pipeline.bench import cpu_name
from pdserve.pipeline.dataset import progress_bar
from pdserve.pipeline.errors import PipelineError
from pdserve.pipeline.loadgen import Request, Target, closed_loop, percentile, run
from pdserve.pipeline.served import Served
from pdserve.runtime.predictor_config import missing_model_files

Goal = Literal["throughput", "latency"]
ENGINES = ("onednn", "openvino", "onnxruntime")
START_TIMEOUT_S = 300.0
CHECK_IMAGES = 16
TUNED_COMMENT = "# Written by pdserve tune: what chose the settings above, measured on this machine."


@dataclass(frozen=True)
class ServingCandidate:
    instances: int
    cpu_threads: int
    max_batch_size: int
    max_queue_delay_ms: float
    engine: str = "onednn"

    @property
    def name(self) -> str:
        return (
            f"{self.instances}x{self.cpu_threads} {self.engine} batch {self.max_batch_size} "
            f"delay {self.max_queue_delay_ms:g} ms"
        )

    def settings(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Measurement:
    candidate: ServingCandidate
    stage: str
    ok: bool = False
    reason: str = ""
    requests_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    cpu_ms_per_image: float = 0.0
    rss_mib: float = 0.0

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidate"] = self.candidate.name
        out.update(self.candidate.settings())
        return out


@dataclass
class TuneOptions:
    goal: Goal = "throughput"
    p99_ms: float | None = None
    clients: int = 16
    seconds: float = 10.0
    layouts: Sequence[tuple[int, int]] | None = None  # (instances, threads); default: every split of the cores
    engines: Sequence[str] = ENGINES
    batch_sizes: Sequence[int] = (1, 4, 8, 16)
    delays_ms: Sequence[float] = (0.0, 2.0, 5.0)
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))


def layouts_for(cores: int) -> list[tuple[int, int]]:
    """Every (instances, threads) that uses all the cores: 2 cores give 1x2 and 2x1."""
    return [(instances, cores // instances) for instances in range(1, cores + 1) if cores % instances == 0]


def better(a: Measurement, b: Measurement | None, options: TuneOptions) -> bool:
    """Whether ``a`` beats ``b`` for the goal: feasible first, then the goal's number."""
    if not a.ok:
        return False
    if b is None or not b.ok:
        return True
    if options.goal == "latency":
        return (a.p50_ms, a.p99_ms) < (b.p50_ms, b.p99_ms)
    a_fits, b_fits = meets(a, options), meets(b, options)
    if a_fits != b_fits:
        return a_fits
    if not a_fits:  # neither meets the p99 limit: the closer one
        return a.p99_ms < b.p99_ms
    return a.requests_per_s > b.requests_per_s


def meets(m: Measurement, options: TuneOptions) -> bool:
    return m.ok and (options.goal == "latency" or options.p99_ms is None or m.p99_ms <= options.p99_ms)


def update_config_text(text: str, values: dict[str, Any], tuned: dict[str, Any]) -> str:
    """``text`` with top-level ``key: value`` lines replaced (or appended) and the ``tuned:`` block
    replaced; every other line, comments included, as it was."""
    lines = text.splitlines()
    out: list[str] = []
    skipping = False
    for line in lines:
        if skipping:
            if line and not line.startswith((" ", "-", "#")):
                skipping = False
            else:
                continue
        if re.match(r"^tuned:", line):
            skipping = True
            if out and out[-1] == TUNED_COMMENT:
                out.pop()
            continue
        out.append(line)
    written = set()
    for i, line in enumerate(out):
        match = re.match(r"^([A-Za-z_]+):", line)
        if match and match.group(1) in values:
            key = match.group(1)
            out[i] = f"{key}: {json.dumps(values[key])}"
            written.add(key)
    for key, value in values.items():
        if key not in written:
            out.append(f"{key}: {json.dumps(value)}")
    while out and not out[-1].strip():
        out.pop()
    out.append(TUNED_COMMENT)
    out.append(yaml.safe_dump({"tuned": tuned}, sort_keys=False, width=100).rstrip())
    return "\n".join(out) + "\n"


class Tuner:
    def __init__(
        self,
        model_dir: Path,
        jpegs: Sequence[bytes],
        options: TuneOptions,
        log: Callable[[str], None] = print,
    ) -> None:
        if not jpegs:
            raise PipelineError("pdserve tune needs images to send (--label-list or --data-dir)")
        self.model_dir = model_dir
        self.name = model_dir.name
        self.config = load_model_config(model_dir)
        if self.config.kind != "image":
            raise PipelineError(f"{model_dir}: pdserve tune measures image models only")
        self.jpegs = list(jpegs)
        self.options = options
        self.log = log
        self.results: list[Measurement] = []
        self._reference: list[int] | None = None

    # ---- one candidate ------------------------------------------------------------------------
    @contextmanager
    def _serving(self, candidate: ServingCandidate) -> Iterator[Served]:
        repo = Path(tempfile.mkdtemp(prefix="pdserve-tune-"))
        try:
            folder = repo / self.name
            folder.mkdir()
            for entry in self.model_dir.iterdir():  # versions and labels by link: nothing is copied
                if entry.name not in (CONFIG_FILE, "search"):
                    (folder / entry.name).symlink_to(entry.resolve())
            doc = yaml.safe_load((self.model_dir / CONFIG_FILE).read_text()) or {}
            doc.pop("tuned", None)
            doc.update(candidate.settings(), max_failed_starts=1, max_queue_size=max(64, 4 * self.options.clients))
            (folder / CONFIG_FILE).write_text(yaml.safe_dump(doc))
            served = Served(repo)
            try:
                yield served
            finally:
                served.stop()
        finally:
            shutil.rmtree(repo, ignore_errors=True)

    def _wait_loaded(self, served: Served) -> str | None:
        """None once every instance serves; else why not."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if served.proc.poll() is not None:
                return f"the server exited with code {served.proc.returncode}"
            try:
                info = httpx.get(f"{served.url}/models/{self.name}", timeout=5).json()
            except (httpx.TransportError, ValueError):
                info = {}
            state, error = info.get("state"), info.get("error")
            if state == "READY":
                return None
            if state in ("FAILED", "DEGRADED"):
                return str(error or f"model {state}")
            time.sleep(0.3)
        return f"not loaded within {START_TIMEOUT_S:g} s"

    def _top1(self, served: Served) -> list[int]:
        with httpx.Client(timeout=60) as client:
            answers = []
            for jpeg in self.jpegs[:CHECK_IMAGES]:
                r = client.post(f"{served.url}/predict?top_k=1", content=jpeg, headers={"content-type": "image/jpeg"})
                r.raise_for_status()
                answers.append(int(r.json()["predictions"][0]["class_id"]))
        return answers

    def measure(self, candidate: ServingCandidate, stage: str) -> Measurement:
        for done in self.results:
            if done.candidate == candidate:
                return done
        result = Measurement(candidate, stage)
        with self._serving(candidate) as served:
            failure = self._wait_loaded(served)
            if failure is not None:
                result.reason = f"did not load: {failure.splitlines()[0][:300]}"
            else:
                answers = self._top1(served)
                if self._reference is None:
                    self._reference = answers
                if answers != self._reference:
                    differ = sum(a != b for a, b in zip(answers, self._reference, strict=True))
                    result.reason = f"outputs differ: {differ} of {len(answers)} top-1 answers changed"
                else:
                    self._load(served, result)
        self.results.append(result)
        self.log(_line(result))
        return result

    def _load(self, served: Served, result: Measurement) -> None:
        clients = 1 if self.options.goal == "latency" else self.options.clients
        requests = [Request(j) for j in self.jpegs]

        def pick(i: int) -> Request:
            return requests[i % len(requests)]

        target = Target("127.0.0.1", served.port)
        run(closed_loop(target, pick, clients, min(2.0, self.options.seconds)))  # warm-up
        target.close()
        target = Target("127.0.0.1", served.port)
        cpu_before = served.cpu_seconds()
        results, elapsed = run(closed_loop(target, pick, clients, self.options.seconds))
        cpu = served.cpu_seconds() - cpu_before
        target.close()
        ok = [r for r in results if r.status == 200]
        latencies = [1000 * r.latency_s for r in ok]
        result.errors = len(results) - len(ok)
        result.ok = bool(ok) and result.errors == 0
        if not result.ok:
            result.reason = f"{result.errors} of {len(results)} requests failed"
        result.requests_per_s = len(ok) / elapsed
        result.p50_ms, result.p99_ms = percentile(latencies, 50), percentile(latencies, 99)
        result.cpu_ms_per_image = 1000 * cpu / max(len(ok), 1)
        result.rss_mib = served.rss_mib()

    # ---- the search ---------------------------------------------------------------------------
    def best(self) -> Measurement | None:
        winner: Measurement | None = None
        for m in self.results:
            if better(m, winner, self.options):
                winner = m
        return winner

    def _stage(self, name: str, candidates: list[ServingCandidate]) -> Measurement | None:
        self.log(f"-- {name}: {len(candidates)} candidates")
        with progress_bar(len(candidates), f"tune: {name}") as bar:
            for candidate in candidates:
                self.measure(candidate, name)
                bar.update(1)
        return self.best()

    def search(self) -> Measurement | None:
        c, o = self.config, self.options
        current = ServingCandidate(c.instances, c.cpu_threads, c.max_batch_size, c.max_queue_delay_ms, c.engine)
        self.log(f"tuning {self.name} for {self._goal_text()} on {o.cores} cores; as configured: {current.name}")
        self.measure(current, "as configured")  # the reference answers come from the model as configured
        layouts = list(o.layouts) if o.layouts else layouts_for(o.cores)
        engines = self.runnable_engines()
        best = self._stage(
            "layout and engine",
            [replace(current, instances=i, cpu_threads=t, engine=e) for i, t in layouts for e in engines],
        )
        if best is None:
            return None
        best = self._stage("batch limit", [replace(best.candidate, max_batch_size=b) for b in o.batch_sizes])
        assert best is not None
        return self._stage("queue delay", [replace(best.candidate, max_queue_delay_ms=d) for d in o.delays_ms])

    def runnable_engines(self) -> list[str]:
        """The engines asked for whose files the newest version has (onnxruntime needs model.onnx)."""
        version_dir = self.model_dir / str(max(version_folders(self.model_dir)))
        engines = []
        for engine in self.options.engines:
            missing = missing_model_files(version_dir, engine)
            if missing is None:
                engines.append(engine)
            else:
                self.log(f"  engine {engine} left out: {missing}")
        return engines

    def _goal_text(self) -> str:
        o = self.options
        if o.goal == "latency":
            return "the lowest p50 latency of one client"
        limit = f" with p99 <= {o.p99_ms:g} ms" if o.p99_ms is not None else ""
        return f"the highest throughput at {o.clients} clients{limit}"

    def report(self) -> dict[str, Any]:
        best = self.best()
        return {
            "model": self.name,
            "goal": self.options.goal,
            "goal_text": self._goal_text(),
            "met": best is not None and meets(best, self.options),
            "best": best.row() if best else None,
            "candidates": [m.row() for m in self.results],
            "options": {k: v for k, v in asdict(self.options).items()},
        }

    def write(self, best: Measurement) -> Path:
        """Write ``best`` into the model's config.yaml, with the measurement that chose it."""
        path = self.model_dir / CONFIG_FILE
        tuned = {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "goal": self._goal_text(),
            "machine": f"{self.options.cores} cores, {cpu_name()}",
            "load": f"{1 if self.options.goal == 'latency' else self.options.clients} closed-loop clients, "
            f"{self.options.seconds:g} s, {len(self.jpegs)} images",
            "measured": {
                "requests_per_s": round(best.requests_per_s, 1),
                "p50_ms": round(best.p50_ms, 1),
                "p99_ms": round(best.p99_ms, 1),
                "cpu_ms_per_image": round(best.cpu_ms_per_image, 2),
                "rss_mib": round(best.rss_mib),
            },
            "candidates": len(self.results),
        }
        settings = best.candidate.settings()
        path.write_text(update_config_text(path.read_text(), settings, tuned))
        load_model_config(self.model_dir)  # what was written must load
        return path


def _line(m: Measurement) -> str:
    if not m.ok:
        return f"  {m.candidate.name:<40} skipped: {m.reason}"
    return (
        f"  {m.candidate.name:<40} {m.requests_per_s:7.1f} req/s  p50 {m.p50_ms:6.1f}  p99 {m.p99_ms:6.1f} ms  "
        f"{m.cpu_ms_per_image:5.1f} CPU ms/img  {m.rss_mib:5.0f} MiB"
    )


def format_tune_report(report: dict[str, Any]) -> str:
    lines = [f"pdserve tune {report['model']}: {report['goal_text']}", ""]
    lines.append("| candidate | stage | requests/s | p50 ms | p99 ms | CPU ms/img | RSS MiB | note |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report["candidates"]:
        if r["ok"]:
            lines.append(
                f"| {r['candidate']} | {r['stage']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r['cpu_ms_per_image']:.1f} | {r['rss_mib']:.0f} | |"
            )
        else:
            lines.append(f"| {r['candidate']} | {r['stage']} | - | - | - | - | - | {r['reason']} |")
    best = report["best"]
    lines.append("")
    if best is None:
        lines.append("no candidate loaded and answered correctly")
    else:
        verdict = "meets the goal" if report["met"] else "the closest; the goal is not met"
        lines.append(f"best: {best['candidate']} ({verdict})")
    return "\n".join(lines)


def dump(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)


def model_folder(repo: Path, model: str) -> Path:
    folder = Path(model) if Path(model).is_dir() else repo / model
    if not (folder / CONFIG_FILE).is_file() or not version_folders(folder):
        raise PipelineError(f"{folder}: not a model folder (config.yaml and a version folder)")
    return folder
