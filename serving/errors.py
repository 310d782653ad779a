"""The serving package's errors: one base carrying an HTTP status, mapped to responses in one place.

:func:`error_response` is that place for every transport (flask app, in-process data plane users):
4xx answers carry the message, 5xx answers say only "internal error" (the log has the traceback).
"""

from __future__ import annotations

from http import HTTPStatus

import orjson


class ServingError(Exception):
    """Base of every error the model server answers deliberately."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, *, status: HTTPStatus | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = HTTPStatus(int(status))


class BadRequestError(ServingError):
    """Malformed body or input that does not match the model's signature (400)."""

    status = HTTPStatus.BAD_REQUEST


class UnsupportedMediaTypeError(ServingError):
    """Content-Type the handler cannot decode (415)."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class NotAcceptableError(ServingError):
    """Accept header that no encoder satisfies (406)."""

    status = HTTPStatus.NOT_ACCEPTABLE


class PayloadTooLargeError(ServingError):
    """Body above SAGEMAKER_MAX_PAYLOAD_IN_MB (413)."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class ModelNotReadyError(ServingError):
    """The model is still loading or failed to load (503)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class ModelLoadError(ServingError):
    """The model could not be prepared or loaded; the message says why (shown in the log and /ping)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class ModelSourceError(ModelLoadError):
    """The model source (directory, archive, URI) is missing or unusable."""


class UnsafeArchiveError(ModelSourceError):
    """A model archive member would escape the target directory or is not a plain file/dir."""


def error_body(status: HTTPStatus | int, message: str) -> bytes:
    """The JSON error body: ``{"error": message, "status": code}``; 5xx never carry details."""
    code = int(status)
    if code >= 500 and code != HTTPStatus.SERVICE_UNAVAILABLE:
        message = "internal error"
    return orjson.dumps({"error": message, "status": code})


def error_response(exc: BaseException) -> tuple[int, bytes]:
    """Map any exception to ``(status, JSON body)``; unknown exceptions are a generic 500."""
    if isinstance(exc, ServingError):
        return int(exc.status), error_body(exc.status, exc.message)
    status = getattr(exc, "status_code", None)  # sagemaker_inference.errors.BaseInferenceToolkitError
    if isinstance(status, int) and 400 <= status < 600 and hasattr(exc, "message"):
        return status, error_body(status, str(exc.message))
    return 500, error_body(500, "internal error")


def runtime_error(status: int, body: bytes, *, endpoint: str, variant: str) -> tuple[int, str, bytes]:
    """The sagemaker-runtime error (status, code, JSON body) for an answer ``/invocations`` gave as
    ``(status, body)``, as SageMaker's front end renders it: a model's 4xx/5xx is a ``ModelError``
    (424) carrying ``OriginalStatusCode`` and ``OriginalMessage`` (the container's body, verbatim); an
    oversized request is the caller's ``ValidationError`` (400); a model that is not loaded yet is
    ``ServiceUnavailable`` (503, retried by boto3).
    """
    original = body.decode("utf-8", errors="replace")
    if status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        code, out_status, message = "ValidationError", 400, _message_of(original)
        extra: dict[str, object] = {}
    elif status == HTTPStatus.SERVICE_UNAVAILABLE:
        code, out_status, message = "ServiceUnavailable", 503, _message_of(original)
        extra = {}
    else:
        kind = "client" if 400 <= status < 500 else "server"
        code, out_status = "ModelError", int(HTTPStatus.FAILED_DEPENDENCY)
        message = (
            f'Received {kind} error ({status}) from primary with message "{original}". See the model '
            f"server log of endpoint {endpoint}, variant {variant} for more information."
        )
        extra = {"OriginalStatusCode": status, "OriginalMessage": original}
    return out_status, code, runtime_error_body(code, message, **extra)


def runtime_error_body(code: str, message: str, **extra: object) -> bytes:
    """A sagemaker-runtime (rest-json) error body; the code also goes in the ``x-amzn-ErrorType`` header."""
    return orjson.dumps({"__type": code, "Message": message, "message": message, **extra})


def _message_of(original: str) -> str:
    try:
        parsed = orjson.loads(original)
    except orjson.JSONDecodeError:
        return original
    return str(parsed.get("error", original)) if isinstance(parsed, dict) else original
