"""One error hierarchy: each class carries its HTTP status, a stable machine-readable code, and the
headers its response needs (``Retry-After`` on the retryable ones)."""

from __future__ import annotations

import math


class PdserveError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str] | None:
        return None


class BadRequest(PdserveError):
    status_code = 400
    code = "bad_request"


class InvalidImage(BadRequest):
    code = "invalid_image"


class InputRejected(BadRequest):
    """The model's own checks refused an input that passed ours (e.g. a size its layers cannot take)."""

    code = "input_rejected"


class BodyTimeout(PdserveError):
    """The client did not send its whole body within the limit (a slow or stalled upload)."""

    status_code = 408
    code = "body_timeout"


class UnsupportedMediaType(PdserveError):
    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLarge(PdserveError):
    status_code = 413
    code = "payload_too_large"


class ImageTooLarge(PayloadTooLarge):
    """An image whose header declares more pixels than allowed (a decompression bomb, or just huge)."""

    code = "image_too_large"


class TooManyImages(PayloadTooLarge):
    code = "too_many_images"


class Unauthorized(PdserveError):
    status_code = 401
    code = "unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(PdserveError):
    status_code = 403
    code = "forbidden"


class ModelNotFound(PdserveError):
    status_code = 404
    code = "model_not_found"


class Overloaded(PdserveError):
    """Refused at admission, before any work: retry after the time the queue needs to drain."""

    status_code = 429
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0, reason: str = "overloaded") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason  # which bound refused it, for pdserve_admission_total

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class Unavailable(PdserveError):
    """Retryable: the server is up but cannot take this request now."""

    status_code = 503
    code = "unavailable"

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": "1"}


class ModelNotReady(Unavailable):
    code = "model_not_ready"


class WorkerDied(Unavailable):
    code = "worker_died"


class WorkerHung(Unavailable):
    code = "worker_hung"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class ModelUnavailable(PdserveError):
    """The model failed for good (bad files, or too many failed restarts): retrying will not help."""

    status_code = 503
    code = "model_unavailable"


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
