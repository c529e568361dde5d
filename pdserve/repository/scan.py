"""Reading a repository's folders: model folders, their configs, labels and version folders (no Paddle).

Layout: ``<repo>/<model>/config.yaml``, an optional labels file, and numbered version folders
``<repo>/<model>/<N>/model.pdmodel + model.pdiparams`` (or ``model.json``, or ``inference.*``, as
Paddle's tools publish them). A version folder's ``inference.yml`` / ``infer_cfg.yml`` configures
the model when ``config.yaml`` does not (``published.py``). A folder that cannot be read fails that
model only: its entry carries the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pdserve.errors import ModelConfigError
from pdserve.kinds import KINDS
from pdserve.model_config import ModelConfig, version_folders
from pdserve.repository.published import load_config
from pdserve.repository.version import ModelState, ModelVersion
from pdserve.runtime.predictor_config import missing_model_files, served_files
from pdserve.settings import Settings

log = logging.getLogger(__name__)


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
        states = {v.state for v in self.versions.values()}
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
        return self.error or next((e for v in self.versions.values() if (e := v.error)), None)

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
    if not KINDS[config.kind].stages(config):  # a pipeline kind's versions hold no program
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
        loaded = load_config(model_dir)
        config = overrides.apply(loaded.config)
        if config.kind not in KINDS:
            raise ModelConfigError(
                f"{model_dir / 'config.yaml'}: field 'kind': unknown model kind {config.kind!r}; kinds: {sorted(KINDS)}"
            )
        labels = _read_labels(model_dir, config) or loaded.labels
        dirs = _version_dirs(model_dir, config)
    except ModelConfigError as exc:
        if not quiet:  # polling re-reads broken folders every interval: say it once, when loading
            log.error("%s", exc.message)
        return ModelEntry(model_dir.name, model_dir, None, {}, error=exc.message)
    extra = [loaded.published] if loaded.published else []
    versions = {
        v: ModelVersion(model_dir.name, v, p, config, labels, fingerprint=_fingerprint(p, model_dir, config, extra))
        for v, p in dirs.items()
    }
    return ModelEntry(model_dir.name, model_dir, config, versions)


def _fingerprint(version_dir: Path, model_dir: Path, config: ModelConfig, extra: list[Path]) -> tuple[object, ...]:
    files = [*served_files(version_dir, config.engine), *extra]
    if config.labels is not None:
        files.append(model_dir / config.labels)
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    return (config.model_dump_json(), *stats)
