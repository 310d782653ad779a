"""SageMaker's async-inference notification message and the SNS publisher."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any

from serving.asyncq.request import ERROR_TOPIC, SUCCESS_TOPIC, AsyncRequest, Outcome, iso_millis

#: IncludeInferenceResponseIn embeds responses up to this size.
MAX_EMBEDDED_RESPONSE = 128 * 1024


def topic_for(request: AsyncRequest, outcome: Outcome) -> str | None:
    """The SNS topic this outcome is published to (None: no notification configured)."""
    return request.success_topic if outcome.succeeded else request.error_topic


def embeds_response(request: AsyncRequest, outcome: Outcome) -> bool:
    """Whether IncludeInferenceResponseIn asks for the response body in this notification."""
    wanted = SUCCESS_TOPIC if outcome.succeeded else ERROR_TOPIC
    return wanted in request.include_response_in


def build_message(
    request: AsyncRequest, outcome: Outcome, response_body: bytes | None = None
) -> dict[str, Any]:
    """The notification, in the shape SageMaker publishes (``eventName: InferenceResult``).

    ``responseBody`` (IncludeInferenceResponseIn, bodies ≤ 128 KB) is ``{"content", "encoding"}`` with
    encoding ``TEXT`` for UTF-8 bodies and ``BASE64`` otherwise — AWS does not document this member's shape.
    """
    request_parameters: dict[str, Any] = {
        "contentType": request.content_type or "application/octet-stream",
        "endpointName": request.endpoint_name,
        "inputLocation": request.input_location,
    }
    if request.accept:
        request_parameters["accept"] = request.accept
    if request.custom_attributes:
        request_parameters["customAttributes"] = request.custom_attributes
    location_key = "outputLocation" if outcome.succeeded else "failureLocation"
    message: dict[str, Any] = {
        "awsRegion": request.region,
        "eventTime": iso_millis(outcome.event_time),
        "receivedTime": iso_millis(request.received_time),
        "invocationStatus": outcome.status,
        "requestParameters": request_parameters,
        "responseParameters": {"contentType": outcome.content_type, location_key: outcome.location},
        "inferenceId": request.inference_id,
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    }
    if outcome.failure_reason:
        message["failureReason"] = outcome.failure_reason
    if response_body is not None and len(response_body) <= MAX_EMBEDDED_RESPONSE:
        try:
            message["responseBody"] = {"content": response_body.decode("utf-8"), "encoding": "TEXT"}
        except UnicodeDecodeError:
            message["responseBody"] = {
                "content": base64.b64encode(response_body).decode("ascii"),
                "encoding": "BASE64",
            }
    return message


def dedup_id(request: AsyncRequest, outcome: Outcome) -> str:
    """Stable per (endpoint, InferenceId, status): the MessageDeduplicationId on FIFO topics."""
    return hashlib.sha256(
        f"{request.endpoint_name}\n{request.inference_id}\n{outcome.status}".encode()
    ).hexdigest()


class SnsPublisher:
    """Publishes notifications with boto3 (one client per region, taken from the topic ARN)."""

    def __init__(self, client: Any = None) -> None:
        self._fixed = client
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _client(self, topic_arn: str) -> Any:
        if self._fixed is not None:
            return self._fixed
        parts = topic_arn.split(":")
        region = parts[3] if len(parts) > 5 and parts[3] else None
        key = region or ""
        with self._lock:
            if key not in self._clients:
                import boto3

                self._clients[key] = boto3.client("sns", region_name=region)
            return self._clients[key]

    def publish(
        self, topic_arn: str, message: dict[str, Any], *, deduplication_id: str, group_id: str
    ) -> str:
        """Publish ``message`` as JSON text; returns the SNS MessageId. Raises botocore errors."""
        kwargs: dict[str, Any] = {
            "TopicArn": topic_arn,
            "Message": json.dumps(message, separators=(",", ":")),
        }
        if topic_arn.endswith(".fifo"):
            # FIFO topics drop a repeat with the same id within 5 minutes: exactly-once there.
            kwargs.update(MessageDeduplicationId=deduplication_id[:128], MessageGroupId=group_id[:128])
        return str(self._client(topic_arn).publish(**kwargs)["MessageId"])
