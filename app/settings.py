"""Server settings: one class, read from ``PDSERVE_*`` environment variables or given directly."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PDSERVE_", frozen=True)

    model_repo: Path = Field(Path("model_repo"), description="Folder of model folders.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_model: str | None = Field(None, description="Model used when a request names none.")
    max_body_bytes: int = Field(16 << 20, gt=0, description="Larger request bodies get 413.")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Larger images get 400 before decoding.")
    request_timeout_s: float = Field(30.0, gt=0, description="A request not answered by then gets 504.")
    decode_threads: int = Field(2, gt=0, description="Threads that decode and preprocess images.")
    worker_start_timeout_s: float = Field(300.0, gt=0, description="Time a worker may take to load and warm up.")
    graceful_shutdown_s: float = Field(30.0, gt=0, description="On SIGTERM, time to finish in-flight requests.")
    log_level: str = "info"
    device: str | None = Field(None, description="Overrides every model's device, e.g. gpu:0 in the GPU image.")
    trt_cache_dir: Path | None = Field(
        None, description="Overrides every model's tensorrt.cache_dir (and sets use_static) so engines persist."
    )

    @field_validator("model_repo")
    @classmethod
    def _repo_exists(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"model repository {v} is not a folder (set PDSERVE_MODEL_REPO or --model-repo)")
        return v
