"""The model repository: which models and versions exist, loading and reloading them without
downtime, unloading, polling the folders, and finding the version a request asks for.

A folder that fails to load fails that model only: it is listed with state FAILED and the reason,
and the others serve.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import yaml

from pdserve.errors import ModelLoadError, ModelNotFound, ModelNotReady, ModelUnavailable, PdserveError
from pdserve.metrics import Metrics
from pdserve.repository.scan import ModelEntry, Overrides, model_folders, scan_model
from pdserve.repository.version import ModelState, ModelVersion
from pdserve.runtime.process import WorkerOptions

log = logging.getLogger(__name__)
REPOSITORY_FILE = "repository.yaml"


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
        """Load every version; pipeline kinds after the models they run on."""
        versions = [v for entry in self.models.values() for v in entry.versions.values()]
        for group in ([v for v in versions if not v.stages], [v for v in versions if v.stages]):
            await asyncio.gather(*(v.load(self._metrics, self._workers, self._resolve) for v in group))

    def _resolve(self, name: str) -> ModelVersion:
        return self.get(name, None)

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

    def catalog(self) -> list[tuple[str, ModelEntry | None]]:
        """Every model folder by name, with its entry if it is loaded (or being unloaded), else None."""
        return [(f.name, self.models.get(f.name) or self._going.get(f.name)) for f in self.folders()]

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
                await candidate.load(self._metrics, self._workers, self._resolve)
                if not candidate.loaded:
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
        state = chosen.state
        if state is ModelState.FAILED:
            raise ModelUnavailable(f"model {name!r} version {chosen.version} failed: {chosen.error}")
        if state not in (ModelState.READY, ModelState.DEGRADED, ModelState.RECOVERING):
            raise ModelNotReady(f"model {name!r} version {chosen.version} is {state.value.lower()}")
        return chosen
