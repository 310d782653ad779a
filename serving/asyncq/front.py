"""The AWS front of an async endpoint: the Lambda behind ``POST /endpoints/<name>/async-invocations``.

The stack's load balancer sends the endpoint's async path to this handler (an ALB Lambda target: the
HTTP request arrives as the ALB's event, the answer leaves as its response dict). It judges the request
as InvokeEndpointAsync does, with the checks :mod:`serving.asyncq.invoke` shares with ``selfmaker up``,
makes sure the input is readable by the endpoint (inside the input locations its role may read, and not
refused by S3), puts the request on the endpoint's SQS queue and answers 202 in sagemaker-runtime's shape,
so boto3's ``invoke_endpoint_async`` returns InferenceId, OutputLocation and FailureLocation. Every refusal
is a sagemaker-runtime error (``x-amzn-ErrorType`` + a JSON body); an unexpected error is a 500 saying
"internal error", with the traceback in the function's log only.

Runs on the plain Lambda Python runtime: standard library and boto3, nothing else (the stack ships this
module, :mod:`serving.asyncq.invoke`, :mod:`serving.asyncq.request` and :mod:`common.uris` in a zip).

Environment (set by the stack, read once per sandbox):

``SELFMAKER_ENDPOINT_NAME``, ``SELFMAKER_QUEUE_URL``, ``SELFMAKER_OUTPUT_PATH``, ``SELFMAKER_FAILURE_PATH``,
``SELFMAKER_SUCCESS_TOPIC``, ``SELFMAKER_ERROR_TOPIC``, ``SELFMAKER_INCLUDE_RESPONSE_IN`` (comma-separated),
``SELFMAKER_INPUT_LOCATIONS`` (comma-separated ``s3://bucket/prefix`` the endpoint's role may read).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import boto3

from common import uris
from serving.asyncq import invoke
from serving.asyncq.request import fifo_ids

log = logging.getLogger(__name__)

_PATH = re.compile(r"^/endpoints/([^/]+)/async-invocations/?$")
#: S3 error codes that mean "the endpoint's role may not read this"
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidObjectState"}
#: S3 / SQS error codes worth a retry by the client (SageMaker's ServiceUnavailable)
_BUSY = {
    "SlowDown",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "503",
    "InternalError",
    "500",
    "KMS.ThrottlingException",
}


@dataclass(frozen=True)
class FrontSettings:
    """One endpoint's front: where its requests go and what its role may read."""

    endpoint_name: str
    queue_url: str
    output: invoke.OutputSpec
    input_locations: tuple[str, ...]
    region: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FrontSettings:
        """Read the settings the stack gives the function; a missing one is a deployment bug (KeyError)."""
        include = tuple(
            v.strip() for v in env.get("SELFMAKER_INCLUDE_RESPONSE_IN", "").split(",") if v.strip()
        )
        return cls(
            endpoint_name=env["SELFMAKER_ENDPOINT_NAME"],
            queue_url=env["SELFMAKER_QUEUE_URL"],
            output=invoke.OutputSpec(
                output_path=env["SELFMAKER_OUTPUT_PATH"],
                failure_path=env.get("SELFMAKER_FAILURE_PATH") or None,
                success_topic=env.get("SELFMAKER_SUCCESS_TOPIC") or None,
                error_topic=env.get("SELFMAKER_ERROR_TOPIC") or None,
                include_response_in=include,
            ),
            input_locations=tuple(
                v.strip() for v in env.get("SELFMAKER_INPUT_LOCATIONS", "").split(",") if v.strip()
            ),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )


def within(location: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the ``s3://`` object ``location`` lies under one of ``prefixes`` (``s3://bucket/prefix``).

    Keys are read verbatim (:func:`common.uris.split_s3`): ``?`` and ``#`` belong to a key, where a URL
    parser would cut it and compare less than the whole key.
    """
    try:
        bucket, key = uris.split_s3(location)
    except uris.UriError:
        return False
    for prefix in prefixes:
        try:
            allowed_bucket, allowed_key = uris.split_s3(prefix)
        except uris.UriError:
            continue
        if allowed_bucket == bucket and key.startswith(allowed_key):
            return True
    return False


class Front:
    """The handler's state: settings and boto3 clients, made once per Lambda sandbox."""

    def __init__(self, settings: FrontSettings, *, s3: Any = None, sqs: Any = None) -> None:
        self.settings = settings
        if s3 is None or sqs is None:
            s3 = s3 or boto3.client("s3", region_name=settings.region)
            sqs = sqs or boto3.client("sqs", region_name=settings.region)
        self.s3 = s3
        self.sqs = sqs

    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """One ALB event → one ALB response (202, or a sagemaker-runtime error)."""
        request_id = str(uuid.uuid4())
        try:
            return self._accept(event, request_id)
        except invoke.InvokeError as exc:
            return error_response(exc.code, exc.message, exc.status, request_id)
        except Exception:
            log.exception("async front of %s failed (request %s)", self.settings.endpoint_name, request_id)
            return error_response("InternalFailure", "internal error", 500, request_id)

    def _accept(self, event: Mapping[str, Any], request_id: str) -> dict[str, Any]:
        if not isinstance(event, Mapping):
            # a direct `aws lambda invoke` with some other JSON: refused, not an internal error
            raise invoke.InvokeError("The event is not an Application Load Balancer request.")
        method = str(event.get("httpMethod") or "").upper()
        match = _PATH.match(str(event.get("path") or ""))
        if method != "POST" or match is None:
            raise invoke.InvokeError(
                f"{method or '?'} {str(event.get('path'))[:200]} is not InvokeEndpointAsync "
                "(POST /endpoints/<name>/async-invocations).",
                code="UnknownOperationException",
                status=404,
            )
        if match.group(1) != self.settings.endpoint_name:
            # The load balancer routes one endpoint's path here; anything else is a wrong rule.
            raise invoke.InvokeError(f"Endpoint {match.group(1)[:63]} not found.")
        headers = event_headers(event)
        params = invoke.parse_headers(headers, schemes=("s3", "https"))
        body = event_body(event)
        invoke.check_payload(params, len(body), inline_body=False)
        assert params.input_location is not None
        self._check_readable(invoke.s3_uri(params.input_location))
        request = invoke.build_request(
            params,
            self.settings.endpoint_name,
            self.settings.output,
            region=self.settings.region,
            received_time=time.time(),
        )
        message: dict[str, Any] = {"QueueUrl": self.settings.queue_url, "MessageBody": request.to_json()}
        if self.settings.queue_url.endswith(".fifo"):
            group, dedup = fifo_ids(request.endpoint_name, request.inference_id)
            message.update(MessageGroupId=group, MessageDeduplicationId=dedup)
        try:
            self.sqs.send_message(**message)
        except Exception as exc:
            if _code(exc) in _BUSY:
                raise invoke.InvokeError(
                    "The request could not be queued; try again.", code="ServiceUnavailable", status=503
                ) from None
            raise
        log.info("queued %s for %s", request.inference_id, request.endpoint_name)
        return {
            "statusCode": 202,
            "statusDescription": "202 Accepted",
            "isBase64Encoded": False,
            "headers": {
                "Content-Type": "application/json",
                "x-amzn-RequestId": request_id,
                **invoke.accepted_headers(request),
            },
            "body": json.dumps({"InferenceId": request.inference_id}),
        }

    def _check_readable(self, location: str) -> None:
        """The input must be inside what the endpoint's role may read, and S3 must not refuse it.

        A missing object is accepted, as SageMaker does: the worker records a failure object naming it.
        """
        if not within(location, self.settings.input_locations):
            raise invoke.InvokeError(
                f"InputLocation {location[:200]} is not readable by endpoint {self.settings.endpoint_name}'s "
                f"role: it may read {', '.join(self.settings.input_locations) or 'no input location'}."
            )
        bucket, key = uris.split_s3(location)  # within() took it apart already: an s3:// URI
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            code = _code(exc)
            if code in {"404", "NoSuchKey", "NotFound"}:
                return
            if code in _DENIED:
                raise invoke.InvokeError(
                    f"InputLocation {location[:200]} is not readable by endpoint "
                    f"{self.settings.endpoint_name}'s role ({code})."
                ) from None
            if code in _BUSY:
                raise invoke.InvokeError(
                    "The input location could not be checked; try again.",
                    code="ServiceUnavailable",
                    status=503,
                ) from None
            raise


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return ""
    return str((response.get("Error") or {}).get("Code", ""))


def event_headers(event: Mapping[str, Any]) -> dict[str, str]:
    """The request headers of an ALB event (single- or multi-value mode; the last value wins)."""
    multi = event.get("multiValueHeaders")
    if isinstance(multi, Mapping):
        return {str(k): str(v[-1]) for k, v in multi.items() if isinstance(v, list) and v}
    single = event.get("headers")
    # headers that are not a mapping count as none: the request is then refused as a 400, not a 500
    if not isinstance(single, Mapping):
        return {}
    return {str(k): str(v) for k, v in single.items() if v is not None}


def event_body(event: Mapping[str, Any]) -> bytes:
    """The request body of an ALB event (base64 when ``isBase64Encoded``)."""
    body = event.get("body") or ""
    if not isinstance(body, (str, bytes, bytearray)):
        raise invoke.InvokeError("The request body is not a string.")
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise invoke.InvokeError("The request body is not valid base64.") from None
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def error_response(code: str, message: str, status: int, request_id: str) -> dict[str, Any]:
    """A sagemaker-runtime error as an ALB response: ``x-amzn-ErrorType`` and a JSON body."""
    text = message if status < 500 else ("internal error" if code == "InternalFailure" else message)
    return {
        "statusCode": status,
        "statusDescription": f"{status} {HTTPStatus(status).phrase}",
        "isBase64Encoded": False,
        "headers": {
            "Content-Type": "application/json",
            "x-amzn-ErrorType": code,
            "x-amzn-RequestId": request_id,
        },
        "body": json.dumps({"__type": code, "Message": text, "message": text}),
    }


_FRONT: Front | None = None


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda entry point (``serving.asyncq.front.handler``)."""
    global _FRONT
    if _FRONT is None:
        # Once per sandbox, at the first request (not at import: nothing happens at import time).
        logging.getLogger().setLevel(logging.INFO)
        _FRONT = Front(FrontSettings.from_env(os.environ))
    return _FRONT.handle(event)
