"""InvokeEndpointAsync's request checks, shared by every front that accepts async requests.

``selfmaker up`` (its ``async-invocations`` route) and the AWS front Lambda (:mod:`serving.asyncq.front`)
both turn the request headers into :class:`InvokeParams` here, and build the queued
:class:`~serving.asyncq.request.AsyncRequest` with :func:`build_request`, so a request is judged the same
way wherever it arrives. Header names, ranges and patterns follow botocore's ``sagemaker-runtime`` model
(``InvokeEndpointAsyncInput``).

Standard library only (plus :mod:`serving.asyncq.request` and :mod:`common.uris`): the front Lambda ships
these modules in a zip whose runtime has nothing but the standard library and boto3.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlparse

from common.uris import UriError, split_s3_location
from serving.asyncq.request import (
    DEFAULT_INVOCATION_TIMEOUT_SECONDS,
    DEFAULT_TTL_SECONDS,
    ERROR_TOPIC,
    MAX_INVOCATION_TIMEOUT_SECONDS,
    MAX_TTL_SECONDS,
    SUCCESS_TOPIC,
    AsyncRequest,
    result_locations,
)

#: Inline ``Body`` limit of InvokeEndpointAsync (newer API versions).
MAX_INLINE_BODY = 128_000
MIN_TTL_SECONDS = 60
MIN_INVOCATION_TIMEOUT_SECONDS = 1
#: botocore's ``Header`` / ``InputLocationHeader`` maximum length.
MAX_HEADER = 1024

# Header names (botocore sagemaker-runtime, InvokeEndpointAsyncInput / Output).
H_CONTENT_TYPE = "X-Amzn-SageMaker-Content-Type"
H_ACCEPT = "X-Amzn-SageMaker-Accept"
H_CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
H_INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
H_INPUT_LOCATION = "X-Amzn-SageMaker-InputLocation"
H_OUTPUT_PATH_EXTENSION = "X-Amzn-SageMaker-S3OutputPathExtension"
H_FILENAME = "X-Amzn-SageMaker-Filename"
H_TTL = "X-Amzn-SageMaker-RequestTTLSeconds"
H_TIMEOUT = "X-Amzn-SageMaker-InvocationTimeoutSeconds"
H_OUTPUT_LOCATION = "X-Amzn-SageMaker-OutputLocation"
H_FAILURE_LOCATION = "X-Amzn-SageMaker-FailureLocation"

_INFERENCE_ID = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,63}$")
_EXTENSION_RE = re.compile(r"^(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]{1,512}$")
_FILENAME_RE = re.compile(r"^(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9\-_.]{0,31}$")
_TOPIC_ARN = re.compile(r"^arn:aws[a-z\-]*:sns:[a-z0-9\-]*:[0-9]{12}:[a-zA-Z0-9_.-]+$")


class InvokeError(Exception):
    """A request InvokeEndpointAsync refuses; ``code`` is the sagemaker-runtime error (ValidationError)."""

    def __init__(self, message: str, *, code: str = "ValidationError", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass(frozen=True)
class InvokeParams:
    """The checked headers of one InvokeEndpointAsync call."""

    inference_id: str
    input_location: str | None
    content_type: str | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    request_ttl_seconds: int = DEFAULT_TTL_SECONDS
    invocation_timeout_seconds: int = DEFAULT_INVOCATION_TIMEOUT_SECONDS
    extension: str | None = None
    filename: str | None = None


@dataclass(frozen=True)
class OutputSpec:
    """Where an endpoint's results and notifications go (its AsyncInferenceConfig.OutputConfig)."""

    output_path: str
    failure_path: str | None = None
    success_topic: str | None = None
    error_topic: str | None = None
    include_response_in: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_config(cls, output_config: Mapping[str, object]) -> OutputSpec:
        """From SageMaker's ``AsyncInferenceConfig.OutputConfig`` shape."""
        notification = output_config.get("NotificationConfig") or {}
        assert isinstance(notification, Mapping)
        include = notification.get("IncludeInferenceResponseIn") or ()
        return cls(
            output_path=str(output_config["S3OutputPath"]),
            failure_path=str(output_config["S3FailurePath"]) if output_config.get("S3FailurePath") else None,
            success_topic=str(notification["SuccessTopic"]) if notification.get("SuccessTopic") else None,
            error_topic=str(notification["ErrorTopic"]) if notification.get("ErrorTopic") else None,
            include_response_in=tuple(str(v) for v in include),
        )


def _invalid(member: str, constraint: str, value: str | None = None) -> InvokeError:
    shown = "null" if value is None else f"'{value[:80]}'"
    return InvokeError(
        f"1 validation error detected: Value {shown} at '{member}' failed to satisfy constraint: {constraint}"
    )


def _lookup(headers: Mapping[str, str]) -> Callable[[str], str | None]:
    # HTTP header names are case-insensitive; ALB events lower-case them, aiohttp keeps them as sent.
    lowered = {str(k).lower(): v for k, v in headers.items()}
    return lambda name: lowered.get(name.lower())


def _int_header(
    get: Callable[[str], str | None], name: str, default: int, low: int, high: int, member: str
) -> int:
    raw = get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise _invalid(member, "Member must be an integer", raw) from None
    if not low <= value <= high:
        raise _invalid(member, f"Member must have value between {low} and {high}", str(value))
    return value


def _ascii_header(get: Callable[[str], str | None], name: str, member: str) -> str | None:
    value = get(name)
    if value is None:
        return None
    if len(value) > MAX_HEADER or any(ord(c) > 127 or c in "\r\n" for c in value):
        raise _invalid(
            member, f"Member must have length less than or equal to {MAX_HEADER} and be ASCII", value
        )
    return value


_S3_HOST = re.compile(r"^([a-z0-9.-]+\.)?s3([.-][a-z0-9-]+)*\.amazonaws\.com(\.cn)?$")


def location_ok(uri: str, schemes: Sequence[str]) -> bool:
    """Whether ``uri`` is an object location of one of ``schemes``: ``s3://bucket/key``, ``file:///path``, or
    (``https``) an S3 URL, virtual-hosted or path-style, as botocore's ``InputLocation`` pattern allows."""
    parsed = urlparse(uri)
    if parsed.scheme not in schemes:
        return False
    if parsed.scheme == "file":
        return bool(parsed.path)
    if parsed.scheme == "https" and not _S3_HOST.match(parsed.netloc):
        return False
    try:
        bucket, key = split_s3_location(uri)
    except UriError:
        return False
    return bool(bucket) and bool(key.strip("/"))


def s3_uri(location: str) -> str:
    """An S3 ``https://`` URL as the ``s3://bucket/key`` URI the worker reads; anything else unchanged."""
    if not location.startswith("https://"):
        return location
    bucket, key = split_s3_location(location)
    return f"s3://{bucket}/{key}"


def topic_ok(arn: str) -> bool:
    """Whether ``arn`` is an SNS topic ARN."""
    return bool(_TOPIC_ARN.match(arn))


def include_ok(value: str) -> bool:
    """Whether ``value`` is an ``IncludeInferenceResponseIn`` member."""
    return value in (SUCCESS_TOPIC, ERROR_TOPIC)


def parse_headers(
    headers: Mapping[str, str], *, schemes: Sequence[str] = ("s3",), new_id: Callable[[], str] | None = None
) -> InvokeParams:
    """Check InvokeEndpointAsync's headers; raise :class:`InvokeError` (ValidationError) on the first bad one.

    ``schemes``: what ``InputLocation`` may be (``s3`` on AWS; ``selfmaker up`` also takes ``file``).
    Whether an input location or an inline body is present is :func:`check_payload`'s business.
    """
    get = _lookup(headers)
    inference_id = get(H_INFERENCE_ID) or (new_id or (lambda: str(uuid.uuid4())))()
    if (
        not _INFERENCE_ID.match(inference_id)
        or "/" in inference_id
        or "\\" in inference_id
        or inference_id in (".", "..")
    ):
        raise _invalid("inferenceId", "1-64 printable characters, no '/' or '\\'", inference_id)
    ttl = _int_header(get, H_TTL, DEFAULT_TTL_SECONDS, MIN_TTL_SECONDS, MAX_TTL_SECONDS, "requestTTLSeconds")
    timeout = _int_header(
        get,
        H_TIMEOUT,
        DEFAULT_INVOCATION_TIMEOUT_SECONDS,
        MIN_INVOCATION_TIMEOUT_SECONDS,
        MAX_INVOCATION_TIMEOUT_SECONDS,
        "invocationTimeoutSeconds",
    )
    content_type = _ascii_header(get, H_CONTENT_TYPE, "contentType")
    accept = _ascii_header(get, H_ACCEPT, "accept")
    custom = _ascii_header(get, H_CUSTOM_ATTRIBUTES, "customAttributes")
    extension = get(H_OUTPUT_PATH_EXTENSION)
    if extension is not None and not _EXTENSION_RE.match(extension):
        raise _invalid("s3OutputPathExtension", "Member must satisfy regular expression pattern", extension)
    filename = get(H_FILENAME)
    if filename is not None and not _FILENAME_RE.match(filename):
        raise _invalid("filename", "Member must satisfy regular expression pattern", filename)
    input_location = get(H_INPUT_LOCATION) or None
    if input_location is not None:
        if len(input_location) > MAX_HEADER or any(ord(c) > 127 or c in "\r\n" for c in input_location):
            raise _invalid(
                "inputLocation",
                f"Member must have length less than or equal to {MAX_HEADER} and be ASCII",
                input_location,
            )
        if not location_ok(input_location, schemes):
            allowed = " or ".join(f"{s}://" for s in schemes)
            raise InvokeError(
                f"InputLocation '{input_location[:200]}' must be an {allowed} URI of an object."
            )
    return InvokeParams(
        inference_id=inference_id,
        input_location=input_location,
        content_type=content_type,
        accept=accept,
        custom_attributes=custom,
        request_ttl_seconds=ttl,
        invocation_timeout_seconds=timeout,
        extension=extension,
        filename=filename,
    )


def check_payload(params: InvokeParams, body_size: int, *, inline_body: bool = True) -> None:
    """Exactly one of InputLocation and an inline Body (≤ :data:`MAX_INLINE_BODY` bytes)."""
    if body_size > MAX_INLINE_BODY:
        raise InvokeError(
            f"Body is larger than {MAX_INLINE_BODY} bytes ({body_size}); upload it and pass InputLocation."
        )
    if params.input_location and body_size:
        raise InvokeError("InputLocation and Body are mutually exclusive.")
    if not params.input_location and body_size and not inline_body:
        raise InvokeError(
            "An inline Body is not accepted by this endpoint; "
            "upload the payload to S3 and pass InputLocation."
        )
    if not params.input_location and not body_size:
        raise _invalid("inputLocation", "Member must not be null")


def build_request(
    params: InvokeParams,
    endpoint_name: str,
    output: OutputSpec,
    *,
    input_location: str | None = None,
    region: str = "us-east-1",
    received_time: float | None = None,
) -> AsyncRequest:
    """The queue message of an accepted request (locations and topics snapshotted from ``output``)."""
    location = input_location or params.input_location
    if not location:
        raise _invalid("inputLocation", "Member must not be null")
    location = s3_uri(location)
    out_location, fail_location = result_locations(
        output.output_path,
        output.failure_path,
        params.inference_id,
        extension=params.extension,
        filename=params.filename,
    )
    extra = {} if received_time is None else {"received_time": received_time}
    return AsyncRequest(
        inference_id=params.inference_id,
        endpoint_name=endpoint_name,
        input_location=location,
        output_location=out_location,
        failure_location=fail_location,
        content_type=params.content_type,
        accept=params.accept,
        custom_attributes=params.custom_attributes,
        request_ttl_seconds=params.request_ttl_seconds,
        invocation_timeout_seconds=params.invocation_timeout_seconds,
        success_topic=output.success_topic,
        error_topic=output.error_topic,
        include_response_in=output.include_response_in,
        region=region,
        **extra,  # type: ignore[arg-type]
    )


def accepted_headers(request: AsyncRequest) -> dict[str, str]:
    """The 202's headers (boto3 reads OutputLocation / FailureLocation from them)."""
    return {H_OUTPUT_LOCATION: request.output_location, H_FAILURE_LOCATION: request.failure_location}
