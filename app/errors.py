"""One error hierarchy: each class carries its HTTP status and a stable machine-readable code."""

from __future__ import annotations


class PdserveError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(PdserveError):
    status_code = 400
    code = "bad_request"


class InvalidImage(BadRequest):
    code = "invalid_image"


class UnsupportedMediaType(PdserveError):
    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLarge(PdserveError):
    status_code = 413
    code = "payload_too_large"


class ModelNotFound(PdserveError):
    status_code = 404
    code = "model_not_found"


class Unavailable(PdserveError):
    """Retryable: the server is up but cannot take this request now."""

    status_code = 503
    code = "unavailable"


class ModelNotReady(Unavailable):
    code = "model_not_ready"


class QueueFull(Unavailable):
    code = "queue_full"


class WorkerDied(Unavailable):
    code = "worker_died"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class RequestTimeout(PdserveError):
    status_code = 504
    code = "timeout"


class InferenceFailed(PdserveError):
    code = "inference_failed"


class ModelConfigError(PdserveError):
    """A model folder that cannot be loaded; it fails that model only."""

    code = "model_config_error"


class ModelLoadError(PdserveError):
    code = "model_load_error"


class ClientDisconnected(PdserveError):
    """The client went away before its answer; recorded, never sent (nginx's 499)."""

    status_code = 499
    code = "client_disconnected"
