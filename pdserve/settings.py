"""Server settings: one class, read from ``PDSERVE_*`` environment variables or given directly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A worker gets this long to finish its batch and exit before it is killed (runtime/process.py).
WORKER_STOP_S = 10.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PDSERVE_", frozen=True)

    model_repo: Path = Field(Path("model_repo"), description="Folder of model folders.")
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 for every interface.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    default_model: str | None = Field(None, description="Model used when a request names none.")
    max_body_bytes: int = Field(16 << 20, gt=0, description="Larger request bodies get 413.")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Larger images get 400 before decoding.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="Default deadline of a request whose model sets no timeout_ms; then 504."
    )
    max_request_timeout_s: float = Field(
        300.0, gt=0, description="Upper bound for X-Request-Timeout-Ms and timeout_ms."
    )
    body_timeout_s: float = Field(30.0, gt=0, description="Time a client has to send its whole body; then 408.")
    max_inflight_requests: int = Field(
        512, gt=0, description="Requests handled at once by the process; beyond it 429 at once."
    )
    max_inflight_body_bytes: int = Field(
        256 << 20, gt=0, description="Bytes of request bodies being read at once; beyond it 429 at once."
    )
    max_images_per_request: int = Field(64, gt=0, description="More images in one request get 413.")
    decode_threads: int = Field(2, gt=0, description="Threads that decode and preprocess images.")
    worker_start_timeout_s: float = Field(300.0, gt=0, description="Time a worker may take to load and warm up.")
    worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness added to worker processes, so the HTTP process (admission, health probes, "
        "decoding) keeps the CPU it needs under overload; 0 for equal priority.",
    )
    worker_idle_spin_ms: float = Field(
        10.0,
        ge=0,
        le=1000,
        description="After a batch, a worker polls for the next one this long before it sleeps: a core that "
        "idles runs the next batch slower (one client's requests leave gaps as long as the HTTP process's "
        "work). 0 sleeps at once.",
    )
    drain_delay_s: float = Field(
        5.0, ge=0, description="On SIGTERM, /readyz turns 503 at once; requests are still taken for this long."
    )
    graceful_shutdown_s: float = Field(
        20.0, gt=0, description="After the drain delay, time to answer accepted requests before they are cut."
    )
    admin_key: SecretStr | None = Field(
        None, description="Bearer key of the management API (/v2/repository/...); unset: that API answers 403."
    )
    admin_key_file: Path | None = Field(
        None, description="File holding the admin key (a mounted Kubernetes Secret); read on each use."
    )
    api_key: SecretStr | None = Field(None, description="Bearer key required by inference endpoints, if set.")
    repository_poll_s: float = Field(
        0, ge=0, description="Re-read model folders this often and (re)load or unload what changed; 0: off."
    )
    strict_readiness: bool = Field(
        True, description="/readyz needs every required model serving; false: any one model serving."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Lowest level logged; access lines of probes and scrapes are debug."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line, with request ids, access fields and worker events."
    )
    device: str | None = Field(None, description="Overrides every model's device, e.g. gpu:0 in the GPU image.")
    trt_cache_dir: Path | None = Field(
        None, description="Overrides every model's tensorrt.cache_dir (and sets use_static) so engines persist."
    )

    @property
    def shutdown_budget_s(self) -> float:
        """Longest a SIGTERM can take to exit: drain delay, answering what is held, stopping workers.

        Orchestrators must allow at least this (Kubernetes terminationGracePeriodSeconds, compose
        stop_grace_period), or in-flight requests are cut."""
        return self.drain_delay_s + self.graceful_shutdown_s + WORKER_STOP_S

    @field_validator("model_repo")
    @classmethod
    def _repo_exists(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"model repository {v} is not a folder (set PDSERVE_MODEL_REPO or --model-repo)")
        return v
