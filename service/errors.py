"""Domain exceptions of the service (pure Python; no web framework here).

Every failure a client can see is one of these; one handler in `app.py` maps each to HTTP as
`status` plus the body `{"error": <code>, "detail": <what was wrong and what is accepted>, "request_id": <its ID>}`.

    ServiceError                      500 internal
    ├── BadRequest                    400 bad_request    bytes that are not a valid HTTP/1.1 request
    │   ├── PayloadTooLarge           413 too_large      body, pixels or tiles over a limit
    │   ├── UnsupportedMediaType      415 invalid_image  not a PNG/JPEG/WebP/HEIC, corrupt, or wrong content type
    │   ├── InvalidParameter          422 invalid_parameter  bad field, missing part, mask size != image size
    │   │   └── EmptyMask             422 empty_mask     a mask with no pixel to edit
    │   └── HeadTooLarge              431 head_too_large  request line + headers over DERMAGAN_MAX_HEAD_BYTES
    ├── Unauthorized                  401 unauthorized   API key missing or wrong
    ├── Unavailable                   503 unavailable    draining (+ Retry-After where retrying helps)
    │   ├── NotReady                  503 not_ready      models still loading / warming
    │   ├── ModelUnavailable          503 model_unavailable  no loaded model serves the task (no Retry-After:
    │   │                                                retrying cannot help; `dermagan edit --url` does not)
    │   └── QueueFull                 503 queue_full     the model's queue is full
    ├── UploadStalled                 408 upload_stalled the upload paused for DERMAGAN_UPLOAD_IDLE_S or went slower
    │                                                   than DERMAGAN_UPLOAD_MIN_RATE
    ├── HeadTimeout                   408 head_timeout   the request head did not arrive within DERMAGAN_HEAD_TIMEOUT_S
    ├── DeadlineExceeded              504 deadline       the request waited past its deadline
    ├── Cancelled                     499 cancelled      the client left before its answer
    └── BackendError                  500 backend        inference failed (never for bad input)
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    code = "internal"
    #: the dermagan_request_failures_total reason
    reason = "backend"

    def __init__(self, detail: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"
    reason = "invalid"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "too_large"
    reason = "too_large"


class UnsupportedMediaType(BadRequest):
    status = 415
    code = "invalid_image"


class InvalidParameter(BadRequest):
    status = 422
    code = "invalid_parameter"


class EmptyMask(InvalidParameter):
    """A mask with no pixel to edit: a mistake in one request, an image to leave alone in a folder
    (`dermagan edit`, which tells it from other refusals by its code, also over HTTP)."""

    code = "empty_mask"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"
    reason = "unauthorized"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"


class NotReady(Unavailable):
    code = "not_ready"
    reason = "not_ready"


class ModelUnavailable(Unavailable):
    """No loaded model serves the task: a lasting condition of the service's configuration (DERMAGAN_MODELS, its
    models folder), so it has no Retry-After and is not retried. 503, not 501, as it has always been answered."""

    code = "model_unavailable"
    reason = "model_unavailable"


class QueueFull(Unavailable):
    code = "queue_full"
    reason = "queue_full"


class UploadStalled(ServiceError):
    """The request's body stopped arriving, or arrives too slowly (408 Request Timeout): its upload place is
    given back."""

    status = 408
    code = "upload_stalled"
    reason = "upload_stalled"


class HeadTooLarge(BadRequest):
    """The request's head (request line and headers) is over DERMAGAN_MAX_HEAD_BYTES (431 Request Header Fields
    Too Large); answered by the HTTP protocol (shedding.py), which then closes the connection."""

    status = 431
    code = "head_too_large"
    reason = "head_too_large"


class HeadTimeout(ServiceError):
    """The request's head (request line and headers) did not arrive whole in time (408 Request Timeout);
    answered by the HTTP protocol (shedding.py), which then closes the connection."""

    status = 408
    code = "head_timeout"
    reason = "head_timeout"


class DeadlineExceeded(ServiceError):
    status = 504
    code = "deadline"
    reason = "deadline"

    @classmethod
    def waiting(cls, deadline_s: float, waited_s: float, waiting_for: str) -> "DeadlineExceeded":
        """The 504 of a request whose deadline passed while it waited for `waiting_for`: it names the request's
        whole deadline (DERMAGAN_REQUEST_TIMEOUT_S), and how much of it that wait took."""
        return cls(f"the request did not finish within its {deadline_s:g} s deadline; it had waited "
                   f"{waited_s:.3g} s of it for {waiting_for}")


class Cancelled(ServiceError):
    """The client went away before its request ran; nobody reads this answer."""

    status = 499
    code = "cancelled"
    reason = "cancelled"


class BackendError(ServiceError):
    status = 500
    code = "backend"
    reason = "backend"
