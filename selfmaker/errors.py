"""Errors of the platform, each carrying the SageMaker error code and HTTP status boto3 expects.

Raised anywhere in the platform and turned into responses in one place (``selfmaker.api.app``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class SageMakerError(Exception):
    """A control-plane or runtime error with its wire code (``__type``), message and HTTP status."""

    code: str = "InternalFailure"
    status: HTTPStatus = HTTPStatus.BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: HTTPStatus | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        #: additional members of the error body (e.g. ModelError's OriginalStatusCode)
        self.extra: dict[str, Any] = dict(extra or {})
        #: the answer closes the connection (``Connection: close``): a body left unread must never be
        #: taken for the next request
        self.close_connection = False


class ValidationException(SageMakerError):
    """Bad input or unknown resource on the control plane (SageMaker's catch-all)."""

    code = "ValidationException"


class ResourceInUse(SageMakerError):
    """The resource exists or is busy (e.g. duplicate training job name)."""

    code = "ResourceInUse"


class ConflictException(SageMakerError):
    """The change conflicts with the resource's state (e.g. deleting a model package group that holds
    model packages)."""

    code = "ConflictException"


class ResourceNotFound(SageMakerError):
    """A modeled not-found (few SageMaker operations actually answer it)."""

    code = "ResourceNotFound"


class ResourceLimitExceeded(SageMakerError):
    """A local quota was hit."""

    code = "ResourceLimitExceeded"


class UnknownOperation(SageMakerError):
    """``X-Amz-Target`` names an operation selfmaker does not implement."""

    code = "UnknownOperationException"


class InternalFailure(SageMakerError):
    """A bug: answered as 500 with "internal error"; the traceback goes to the log only."""

    code = "InternalFailure"
    status = HTTPStatus.INTERNAL_SERVER_ERROR


# ---- runtime (sagemaker-runtime) -------------------------------------------------------------


class ValidationError(SageMakerError):
    """Runtime bad input / unknown endpoint / endpoint not ready (400)."""

    code = "ValidationError"


class ModelError(SageMakerError):
    """The model server answered non-2xx or timed out (424)."""

    code = "ModelError"
    status = HTTPStatus.FAILED_DEPENDENCY


class ModelNotReadyException(SageMakerError):
    """Capacity is still being provisioned (429, not retried by boto3's standard mode)."""

    code = "ModelNotReadyException"
    status = HTTPStatus.TOO_MANY_REQUESTS


class ThrottlingException(SageMakerError):
    """Too many concurrent requests (429, retried by boto3)."""

    code = "ThrottlingException"
    status = HTTPStatus.TOO_MANY_REQUESTS


class ServiceUnavailable(SageMakerError):
    """No instance could take the request right now (503, retried by boto3)."""

    code = "ServiceUnavailable"
    status = HTTPStatus.SERVICE_UNAVAILABLE


# ---- CloudWatch Logs (Logs_20140328.*, served on the control plane's port) ----------------------------


class InvalidParameterException(SageMakerError):
    """CloudWatch Logs' bad input: a constraint of the service model, a bad token, conflicting members."""

    code = "InvalidParameterException"


class LogsResourceNotFound(SageMakerError):
    """CloudWatch Logs' unknown log group or log stream."""

    code = "ResourceNotFoundException"


# ---- CloudWatch (metrics and alarms): its query-compatible codes ---------------------------------------


class InvalidParameterValue(SageMakerError):
    """CloudWatch's bad input: a value it cannot use (a constraint of the model, an unknown namespace …)."""

    code = "InvalidParameterValue"


class InvalidParameterCombination(SageMakerError):
    """CloudWatch: members that cannot go together (Statistics and ExtendedStatistics both missing …)."""

    code = "InvalidParameterCombination"


class MissingParameter(SageMakerError):
    """CloudWatch: a required member is missing."""

    code = "MissingParameter"


class CloudWatchResourceNotFound(SageMakerError):
    """CloudWatch: an alarm that does not exist (SetAlarmState, DeleteAlarms)."""

    code = "ResourceNotFound"
    status = HTTPStatus.NOT_FOUND


class LimitExceeded(SageMakerError):
    """CloudWatch: too many datapoints, alarms or queries."""

    code = "LimitExceeded"


class InvalidNextToken(SageMakerError):
    """CloudWatch: a NextToken this platform did not hand out."""

    code = "InvalidNextToken"


class InvalidFormat(SageMakerError):
    """CloudWatch: SetAlarmState's StateReasonData is not JSON."""

    code = "InvalidFormat"


# ---- authentication (every API; AWS's own codes, so boto3 raises the ClientError a user knows) --------


class AuthError(SageMakerError):
    """A request the SigV4 check refused; rendered in the shape of the API that was called."""

    status = HTTPStatus.FORBIDDEN


class MissingAuthenticationToken(AuthError):
    """No signature at all (no ``Authorization`` header, no ``X-Amz-Signature`` query parameter)."""

    code = "MissingAuthenticationToken"


class NotSignedIn(AuthError):
    """A web console request with neither a session cookie nor a signature (pages send the browser to the
    login form instead)."""

    code = "MissingAuthenticationToken"
    status = HTTPStatus.UNAUTHORIZED


class IncompleteSignature(AuthError):
    """A signature that is malformed: missing or duplicated parts, bad date, unsigned required headers."""

    code = "IncompleteSignature"
    status = HTTPStatus.BAD_REQUEST


class UnrecognizedClient(AuthError):
    """The access key id is not one of the platform's keys."""

    code = "UnrecognizedClientException"


class InvalidSignature(AuthError):
    """The signature does not match, is expired or not yet valid, or is scoped to another region/service."""

    code = "InvalidSignatureException"


class AccessDenied(AuthError):
    """The key is valid but its allow-list does not name the action called."""

    code = "AccessDeniedException"
