"""Response bodies, as they appear in the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PredictionOut(BaseModel):
    class_id: int = Field(examples=[0])
    label: str = Field(examples=["tench"])
    score: float = Field(examples=[0.93])


class PredictResponse(BaseModel):
    model: str = Field(examples=["efficientnet_lite0"])
    version: int = Field(examples=[1])
    predictions: list[PredictionOut]


class ImageResult(BaseModel):
    predictions: list[PredictionOut]


class BoxOut(BaseModel):
    class_id: int = Field(examples=[0])
    label: str = Field(examples=["person"])
    score: float = Field(examples=[0.91])
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="x1, y1, x2, y2 in the posted image's pixels",
        examples=[[12, 40, 96, 200]],
    )


class DetectResponse(BaseModel):
    """A detector's answer (model kind detection): the boxes over score_threshold, best first."""

    model: str = Field(examples=["ppyoloe"])
    version: int = Field(examples=[1])
    boxes: list[BoxOut]


class DetectionResult(BaseModel):
    boxes: list[BoxOut]


class BatchPredictResponse(BaseModel):
    model: str
    version: int
    results: list[ImageResult | DetectionResult] = Field(
        description="One entry per posted image, in order: classes (classifiers) or boxes (detectors)."
    )


class ErrorBody(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str = Field(examples=["cannot decode image: not a JPEG, PNG, WebP or BMP file"])
    request_id: str | None = Field(None, description="The request's id, as in its X-Request-ID response header.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class InputInfo(BaseModel):
    name: str
    shape: list[int]
    dtype: str


class InstanceInfo(BaseModel):
    index: int
    pid: int | None
    state: str
    restarts: int
    device: str = Field("cpu", description="Where this worker runs: cpu or gpu:N (config.yaml's device or devices).")
    healthy: bool = Field(
        True, description="Counted by readiness: serving, and not hung since its last finished batch."
    )
    error: str | None
    validation: dict[str, Any] | None = Field(
        None,
        description="INT8 models: this worker's check against FP32 (images, agreement, largest_drop, "
        "max_disagreement, isa, seconds, passed, action serve|refuse|fallback).",
    )


class VersionInfo(BaseModel):
    version: int
    state: str
    error: str | None
    program: str | None = Field(None, description="The program file served, e.g. model.pdmodel or inference.json.")
    format: str | None = Field(
        None, description="pdmodel (Paddle 2 ProgramDesc) or pir (Paddle 3 PIR program, JSON).", examples=["pir"]
    )
    instances: list[InstanceInfo]
    compute_timeout_ms: float | None = Field(
        None, description="In force: a batch running longer marks its worker hung (set, or derived at load)."
    )


class ModelInfo(BaseModel):
    name: str
    state: str
    error: str | None = None
    description: str = ""
    versions: list[VersionInfo] = []
    precision: str | None = None
    device: str | None = None
    instances: int | None = None
    cpu_threads: int | None = None
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    batch_sizes: list[int] | None = None
    max_queue_size: int | None = None
    timeout_ms: int | None = None
    compute_timeout_ms: int | None = None
    required: bool | None = None
    kind: str | None = Field(None, description="image, detection, or tensor (inputs and outputs at /v2/models/{name})")
    input: InputInfo | None = None
    random_weights: bool | None = None


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str] = Field(description="State of every configured model.")
    reasons: list[str] = Field(default=[], description="Why the server is not ready, if it is not.")
    degraded: list[str] = Field(
        default=[],
        description="Models not fully serving that do not make the server unready (not required, "
        "or with some instances still serving).",
    )


class ModelReadiness(BaseModel):
    name: str
    ready: bool = Field(description="At least one instance of the model serves.")
    state: str
    reason: str | None = None
