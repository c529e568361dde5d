"""The model repository: which models and versions exist, their state, and loading them.

Layout: ``<repo>/<model>/config.yaml``, an optional labels file, and numbered version folders
``<repo>/<model>/<N>/model.pdmodel + model.pdiparams`` (or ``inference.*``, as Paddle's tools
publish them). A folder that fails to load fails that model only: it is listed with state FAILED
and the reason, and the others serve.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from pdserve.admission import ModelAdmission
from pdserve.batching import BatchObserver, BatchPolicy, DynamicBatcher
from pdserve.errors import (
    ModelConfigError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ModelUnavailable,
    PdserveError,
)
from pdserve.metrics import Metrics
from pdserve.model_config import ModelConfig, load_model_config, version_folders
from pdserve.runtime.pool import PoolObserver, WorkerPool
from pdserve.runtime.predictor_config import missing_model_files, served_files
from pdserve.runtime.process import WorkerOptions
from pdserve.runtime.tensor_model import Signature
from pdserve.settings import Settings
from pdserve.stats import VersionStats

log = logging.getLogger(__name__)
REPOSITORY_FILE = "repository.yaml"


class ModelState(StrEnum):
    PENDING = "PENDING"
    LOADING = "LOADING"
    READY = "READY"
    DEGRADED = "DEGRADED"  # serving, with some instances restarting or given up
    RECOVERING = "RECOVERING"  # loaded, but no instance serves now; they are being restarted
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"  # replaced or unloaded: finishing the requests it holds
    UNLOADED = "UNLOADED"


class _BatchMetrics(BatchObserver):
    def __init__(self, metrics: Metrics, model: str, admission: ModelAdmission, stats: VersionStats) -> None:
        self._size = metrics.batch_size.labels(model)
        self._wait = metrics.queue_wait.labels(model)
        self._expired = metrics.expired.labels(model, "queued")
        self._admission = admission
        self._stats = stats

    def dispatched(self, size: int, waits: list[float]) -> None:
        self._size.observe(size)
        for w in waits:
            self._wait.observe(w)
        self._stats.batch_dispatched(size, waits)

    def completed(self, size: int, seconds: float) -> None:
        self._admission.rate.observe(size, seconds)

    def expired(self, count: int) -> None:
        self._expired.inc(count)


class _PoolMetrics(PoolObserver):
    def __init__(self, metrics: Metrics, model: str, stats: VersionStats) -> None:
        self._stats = stats
        self._restarts = metrics.worker_restarts.labels(model)  # a zero, not an absent series, until one
        self._compute = metrics.compute.labels(model)
        self._padding = metrics.padding.labels(model)

    def restarted(self) -> None:
        self._restarts.inc()

    def computed(self, seconds: float, size: int, padded: int) -> None:
        self._compute.observe(seconds)
        self._padding.inc(padded - size)
        self._stats.batch_computed(seconds, padded)


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path
    config: ModelConfig
    labels: list[str] | None
    state: ModelState = ModelState.PENDING
    error: str | None = None
    pool: WorkerPool | None = field(default=None, repr=False)
    batcher: DynamicBatcher[Any, Any] | None = field(default=None, repr=False)
    admission: ModelAdmission | None = field(default=None, repr=False)
    stats: VersionStats = field(default_factory=VersionStats, repr=False)
    fingerprint: tuple[object, ...] = ()  # of its files: a load that finds it unchanged keeps it
    users: int = field(default=0, repr=False)  # requests that resolved this version and are not done
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def hold(self) -> None:
        self.users += 1
        self._idle.clear()

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._idle.set()

    async def retire(self, timeout_s: float) -> None:
        """Take no new requests; let those that resolved this version finish; then stop it."""
        if self.state is not ModelState.FAILED:
            self.state = ModelState.UNLOADING
        if self.batcher is not None:
            self.batcher.flush()  # nothing new will join: run what waits for company now
        if self.users:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_s)
            except TimeoutError:
                log.warning(
                    "model %s version %d: %d requests still held after %.0fs",
                    self.name,
                    self.version,
                    self.users,
                    timeout_s,
                )
        await self.unload()

    @property
    def alive(self) -> int:
        return self.pool.alive if self.pool is not None and self.state is ModelState.READY else 0

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth if self.batcher is not None else 0

    @property
    def current_state(self) -> ModelState:
        if self.state is not ModelState.READY or self.pool is None:
            return self.state
        if self.pool.failed:
            return ModelState.FAILED
        healthy = self.pool.healthy  # a worker that replaced a hung one counts once it has answered
        if healthy == 0:
            return ModelState.RECOVERING
        if healthy < len(self.pool.instances) or self.fallback is not None:
            return ModelState.DEGRADED
        return ModelState.READY

    @property
    def signature(self) -> Signature | None:
        """A tensor model's inputs and outputs, once its workers have started."""
        return self.pool.signature if self.pool is not None else None

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        """An image model's output shape per image, once its workers have started."""
        return self.pool.output_shape if self.pool is not None else None

    @property
    def compute_timeout_s(self) -> float | None:
        return self.pool.compute_timeout_s if self.pool is not None else None

    def instances(self) -> list[dict[str, Any]]:
        """Each worker instance: index, pid, state, restarts, health, error, validation."""
        return self.pool.describe() if self.pool is not None else []

    @property
    def validation(self) -> list[dict[str, Any]]:
        """An INT8 version's checks against FP32, one per worker that ran one."""
        if self.pool is None:
            return []
        return [i.validation for i in self.pool.instances if i.validation is not None]

    @property
    def fallback(self) -> str | None:
        """Why FP32 serves in this INT8 version's place, if it does (quantization.on_failure: fallback)."""
        failed = next((v for v in self.validation if v["action"] == "fallback"), None)
        if failed is None:
            return None
        return (
            f"INT8 validation on {failed['isa']}: top-1 agreement with FP32 {failed['agreement']:.1%} "
            f"(allowed disagreement {failed['max_disagreement']:.1%}); serving the FP32 fallback"
        )

    @property
    def serving(self) -> bool:
        """At least one instance takes batches."""
        return self.current_state in (ModelState.READY, ModelState.DEGRADED)

    @property
    def current_error(self) -> str | None:
        if self.error is not None or self.pool is None:
            return self.error
        errors = [f"instance {i.index}: {i.error}" for i in self.pool.instances if i.error]
        if self.fallback is not None:
            errors.append(self.fallback)
        return "; ".join(errors) or None

    async def load(self, metrics: Metrics, workers: WorkerOptions) -> None:
        """Start the workers and the batcher, in a context of their own: a load through the admin API
        must not leave that request's id on every later line its workers, supervisor and batcher log."""
        loop = asyncio.get_running_loop()
        await loop.create_task(self._load(metrics, workers), context=contextvars.Context())

    async def _load(self, metrics: Metrics, workers: WorkerOptions) -> None:
        self.state = ModelState.LOADING
        pool = WorkerPool(self.name, self.path, self.config, workers, _PoolMetrics(metrics, self.name, self.stats))
        try:
            await pool.start()
        except PdserveError as exc:
            self.state, self.error = ModelState.FAILED, exc.message
            log.error(
                "model %s version %d failed to load: %s", self.name, self.version, exc.message,
                extra={"event": "version_failed", "model": self.name, "version": self.version, "reason": exc.message},
            )  # fmt: skip
            return
        policy = BatchPolicy(
            max_batch_size=self.config.max_batch_size,
            max_delay_s=self.config.max_queue_delay_ms / 1000,
            concurrency=self.config.instances,
            sizes=self.config.padded_batch_sizes if self.config.trims_batches else (),
        )
        self.pool = pool
        for check in self.validation:
            metrics.int8_agreement.labels(self.name).set(check["agreement"])
            metrics.int8_fallback.labels(self.name).set(check["action"] == "fallback")
        admission_total = metrics.admission
        self.admission = ModelAdmission(
            self.name,
            self.config.max_queue_size,
            queued=lambda: self.batcher.queue_depth if self.batcher is not None else 0,
            serving_instances=lambda: pool.alive,
            count=lambda reason: admission_total.labels(self.name, reason).inc(),
        )
        observer = _BatchMetrics(metrics, self.name, self.admission, self.stats)
        run = pool.infer_tensors if self.config.kind == "tensor" else pool.infer
        self.batcher = DynamicBatcher(run, policy, observer)
        self.batcher.start()
        self.state = ModelState.READY
        log.info(
            "model %s version %d ready (%d instances)", self.name, self.version, self.config.instances,
            extra={"event": "version_ready", "model": self.name, "version": self.version,
                   "instances": self.config.instances},
        )  # fmt: skip

    async def unload(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.pool is not None:
            await self.pool.stop()
        if self.state is not ModelState.FAILED:
            self.state = ModelState.UNLOADED


@dataclass
class ModelEntry:
    """One model folder: its versions, or why it could not be read."""

    name: str
    path: Path
    config: ModelConfig | None
    versions: dict[int, ModelVersion]
    error: str | None = None

    @property
    def state(self) -> ModelState:
        if self.error is not None or not self.versions:
            return ModelState.FAILED
        states = {v.current_state for v in self.versions.values()}
        for s in (
            ModelState.FAILED,
            ModelState.RECOVERING,
            ModelState.LOADING,
            ModelState.PENDING,
            ModelState.DEGRADED,
        ):
            if s in states:
                return s
        return states.pop()

    @property
    def serving(self) -> bool:
        return any(v.serving for v in self.versions.values())

    @property
    def required(self) -> bool:
        return self.config.required if self.config is not None else True

    @property
    def reason(self) -> str | None:
        """Why the model is not fully serving, if it is not."""
        return self.error or next((e for v in self.versions.values() if (e := v.current_error)), None)

    @property
    def latest(self) -> ModelVersion | None:
        return self.versions[max(self.versions)] if self.versions else None


def _read_labels(model_dir: Path, config: ModelConfig) -> list[str] | None:
    if config.labels is None:
        return None
    return [line.strip() for line in (model_dir / config.labels).read_text().splitlines() if line.strip()]


def _version_dirs(model_dir: Path, config: ModelConfig) -> dict[int, Path]:
    found = version_folders(model_dir)
    if not found:
        raise ModelConfigError(f"{model_dir}: no version folder (expected {model_dir}/1/model.pdmodel)")
    for _version, path in found.items():
        missing = missing_model_files(path, config.engine)
        if missing:
            raise ModelConfigError(missing)
    if config.versions == "latest":
        return {max(found): found[max(found)]}
    if config.versions == "all":
        return found
    absent = sorted(set(config.versions) - set(found))
    if absent:
        raise ModelConfigError(f"{model_dir / 'config.yaml'}: field 'versions': no folder for {absent}")
    return {v: found[v] for v in config.versions}


@dataclass(frozen=True)
class Overrides:
    """Deployment-wide settings that win over every model's config."""

    device: str | None = None
    trt_cache_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Overrides:
        """The server's overrides; ``pdserve build-engines`` takes the same ones."""
        return cls(device=settings.device, trt_cache_dir=settings.trt_cache_dir)

    def apply(self, config: ModelConfig) -> ModelConfig:
        update: dict[str, object] = {}
        if self.device is not None:
            update["device"] = self.device
        if self.trt_cache_dir is not None:
            trt = config.tensorrt.model_copy(update={"cache_dir": str(self.trt_cache_dir), "use_static": True})
            update["tensorrt"] = trt
        # validate again: the override goes through the same checks as the file
        return ModelConfig.model_validate({**config.model_dump(), **update}) if update else config


def model_folders(root: Path) -> list[Path]:
    """The model folders of a repository: its sub-folders, except hidden ones and ``_``-prefixed ones."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def scan_model(model_dir: Path, overrides: Overrides, quiet: bool = False) -> ModelEntry:
    try:
        config = overrides.apply(load_model_config(model_dir))
        labels = _read_labels(model_dir, config)
        dirs = _version_dirs(model_dir, config)
    except ModelConfigError as exc:
        if not quiet:  # polling re-reads broken folders every interval: say it once, when loading
            log.error("%s", exc.message)
        return ModelEntry(model_dir.name, model_dir, None, {}, error=exc.message)
    versions = {
        v: ModelVersion(model_dir.name, v, p, config, labels, fingerprint=_fingerprint(p, model_dir, config))
        for v, p in dirs.items()
    }
    return ModelEntry(model_dir.name, model_dir, config, versions)


def _fingerprint(version_dir: Path, model_dir: Path, config: ModelConfig) -> tuple[object, ...]:
    files = served_files(version_dir, config.engine)
    if config.labels is not None:
        files.append(model_dir / config.labels)
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    return (config.model_dump_json(), *stats)


class ModelRepository:
    def __init__(
        self, root: Path, metrics: Metrics, workers: WorkerOptions, overrides: Overrides | None = None
    ) -> None:
        self.root = root
        self._overrides = overrides or Overrides()
        self._metrics = metrics
        self._workers = workers
        self.models: dict[str, ModelEntry] = {}
        self.default_model: str | None = None
        self._going: dict[str, ModelEntry] = {}  # being unloaded: its requests are still answered
        self._locks: dict[str, asyncio.Lock] = {}
        self.retire_timeout_s = 30.0

    def scan(self, default_model: str | None = None) -> None:
        """Read every model folder's config (fast, no Paddle); loading comes after."""
        self.default_model = default_model or self._repository_default()
        self.models = {p.name: scan_model(p, self._overrides) for p in model_folders(self.root)}
        if not self.models:
            raise ModelLoadError(f"model repository {self.root} has no model folders")
        for name in self.models:
            self._bind_gauges(name)
        if self.default_model is not None and self.default_model not in self.models:
            raise ModelLoadError(
                f"default model {self.default_model!r} is not in {self.root}; it has {sorted(self.models)}"
            )

    def _repository_default(self) -> str | None:
        path = self.root / REPOSITORY_FILE
        if not path.is_file():
            return None
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ModelLoadError(f"{path}: not valid YAML: {exc}") from None
        unknown = set(doc) - {"default_model"} if isinstance(doc, dict) else {"(not a mapping)"}
        if unknown:
            raise ModelLoadError(f"{path}: unknown fields {sorted(unknown)}; only 'default_model' is read")
        default = doc.get("default_model")
        return str(default) if default is not None else None

    async def load_all(self) -> None:
        versions = [v for entry in self.models.values() for v in entry.versions.values()]
        await asyncio.gather(*(v.load(self._metrics, self._workers) for v in versions))

    def _versions_of(self, name: str) -> list[ModelVersion]:
        entries = [e for e in (self.models.get(name), self._going.get(name)) if e is not None]
        return [v for e in entries for v in e.versions.values()]

    def _bind_gauges(self, name: str) -> None:
        """Workers alive and images queued, summed over the model's versions when scraped (during a
        reload two versions serve at once, and neither may overwrite the other's numbers)."""
        m = self._metrics
        m.workers_alive.labels(name).set_function(lambda: sum(v.alive for v in self._versions_of(name)))
        m.queue_depth.labels(name).set_function(lambda: sum(v.queue_depth for v in self._versions_of(name)))
        m.worker_restarts.labels(name)  # a zero, not an absent series, until the first restart

    def folders(self) -> list[Path]:
        return model_folders(self.root)

    def index(self) -> list[dict[str, str]]:
        """Every model folder, loaded or not, with its versions and states (the repository extension)."""
        rows = []
        for folder in self.folders():
            entry = self.models.get(folder.name) or self._going.get(folder.name)
            if entry is None:
                rows.append({"name": folder.name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"})
                continue
            if not entry.versions:
                rows.append({"name": entry.name, "version": "", "state": "UNAVAILABLE", "reason": entry.error or ""})
            for number, v in sorted(entry.versions.items()):
                state = "READY" if v.serving else ("LOADING" if v.state is ModelState.LOADING else "UNAVAILABLE")
                rows.append(
                    {"name": entry.name, "version": str(number), "state": state, "reason": v.current_error or ""}
                )
        return rows

    async def load_model(self, name: str) -> ModelEntry:
        """(Re)load one model from its folder without interrupting its traffic.

        New or changed versions start and warm up beside the serving ones; then the entry is swapped
        at once, and the versions it replaced finish the requests they hold before their workers
        stop. A load that fails leaves what serves untouched and raises with the reason."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            folder = self.root / name
            if name.startswith((".", "_")) or "/" in name or not folder.is_dir():
                raise ModelNotFound(f"no model folder {name!r} in the repository")
            fresh = scan_model(folder, self._overrides)
            if fresh.error is not None:
                raise ModelLoadError(fresh.error)
            old = self.models.get(name)
            kept: dict[int, ModelVersion] = {}
            started: list[ModelVersion] = []
            for number, candidate in sorted(fresh.versions.items()):
                current = old.versions.get(number) if old is not None else None
                if current is not None and current.fingerprint == candidate.fingerprint and current.serving:
                    kept[number] = current
                    continue
                await candidate.load(self._metrics, self._workers)
                if candidate.state is not ModelState.READY:
                    await asyncio.gather(*(v.unload() for v in started))
                    raise ModelLoadError(f"model {name!r} version {number}: {candidate.error}")
                started.append(candidate)
                kept[number] = candidate
            self.models[name] = ModelEntry(name, folder, fresh.config, kept)  # traffic moves here, at once
            self._bind_gauges(name)
            replaced = [v for v in (old.versions.values() if old is not None else []) if kept.get(v.version) is not v]
            await asyncio.gather(*(v.retire(self.retire_timeout_s) for v in replaced))
            log.info(
                "model %s loaded: versions %s (%d new, %d retired)", name, sorted(kept), len(started), len(replaced)
            )
            return self.models[name]

    async def unload_model(self, name: str) -> None:
        """Stop serving a model: new requests get 404 at once, held ones are answered, then it stops."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.models.pop(name, None)
            if entry is None:
                raise ModelNotFound(f"model {name!r} is not loaded")
            self._going[name] = entry
            try:
                await asyncio.gather(*(v.retire(self.retire_timeout_s) for v in entry.versions.values()))
            finally:
                del self._going[name]
            log.info("model %s unloaded", name)

    def _fingerprints(self) -> dict[str, tuple[object, ...]]:
        found: dict[str, tuple[object, ...]] = {}
        for folder in self.folders():
            try:
                entry = scan_model(folder, self._overrides, quiet=True)
            except OSError:
                continue
            versions = tuple(sorted((n, v.fingerprint) for n, v in entry.versions.items()))
            found[folder.name] = (entry.error, versions)
        return found

    async def poll(self, interval_s: float) -> None:
        """Every ``interval_s``, load what changed in the model folders and unload what was removed."""
        seen = await asyncio.to_thread(self._fingerprints)
        while True:
            await asyncio.sleep(interval_s)
            now = await asyncio.to_thread(self._fingerprints)
            for name in sorted(set(seen) | set(now)):
                if seen.get(name) == now.get(name):
                    continue
                try:
                    if name in now:
                        await self.load_model(name)
                    elif name in self.models:
                        await self.unload_model(name)
                except PdserveError as exc:
                    log.error("repository poll: %s: %s", name, exc.message)
            seen = now

    def flush_batches(self) -> None:
        for entry in self.models.values():
            for v in entry.versions.values():
                if v.batcher is not None:
                    v.batcher.flush()

    async def unload_all(self) -> None:
        versions = [v for entry in self.models.values() for v in entry.versions.values()]
        await asyncio.gather(*(v.unload() for v in versions))

    def get(self, name: str | None, version: int | None) -> ModelVersion:
        """Find a servable version, or raise ``ModelNotFound`` / ``ModelNotReady``."""
        if name is None:
            if self.default_model is not None:
                name = self.default_model
            elif len(self.models) == 1:
                name = next(iter(self.models))
            else:
                raise ModelNotFound(f"name a model: ?model=<name>, one of {sorted(self.models)}")
        entry = self.models.get(name)
        if entry is None:
            if name in self._going:
                raise ModelUnavailable(f"model {name!r} is being unloaded")
            raise ModelNotFound(f"no model {name!r}; available: {sorted(self.models)}")
        if entry.error is not None:
            raise ModelUnavailable(f"model {name!r} failed to load: {entry.error}")
        if version is None:
            chosen = entry.latest
        elif version not in entry.versions:
            raise ModelNotFound(f"model {name!r} has no loaded version {version}; loaded: {sorted(entry.versions)}")
        else:
            chosen = entry.versions[version]
        assert chosen is not None
        state = chosen.current_state
        if state is ModelState.FAILED:
            raise ModelUnavailable(f"model {name!r} version {chosen.version} failed: {chosen.current_error}")
        if state not in (ModelState.READY, ModelState.DEGRADED, ModelState.RECOVERING):
            raise ModelNotReady(f"model {name!r} version {chosen.version} is {state.value.lower()}")
        return chosen
