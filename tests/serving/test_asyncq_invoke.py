"""InvokeEndpointAsync's shared request checks (serving.asyncq.invoke) and the front Lambda's handler
(serving.asyncq.front) on its own, against moto's S3 and SQS."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.asyncq import AsyncRequest, invoke
from serving.asyncq.front import Front, FrontSettings, event_headers, handler, within

LOC = "s3://in-bucket/async/ep/x.csv"
OUT = invoke.OutputSpec(
    "s3://out/async/ep/output/", "s3://out/async/ep/failures/", "arn:aws:sns:us-east-1:123456789012:ok"
)


def test_defaults_and_case_insensitive_names() -> None:
    params = invoke.parse_headers(
        {"x-amzn-sagemaker-inputlocation": LOC, "X-AMZN-SAGEMAKER-CONTENT-TYPE": "text/csv"},
        new_id=lambda: "generated",
    )
    assert params == invoke.InvokeParams(
        inference_id="generated", input_location=LOC, content_type="text/csv"
    )
    assert (params.request_ttl_seconds, params.invocation_timeout_seconds) == (21600, 900)


@pytest.mark.parametrize(
    ("headers", "member"),
    [
        ({invoke.H_TTL: "59"}, "requestTTLSeconds"),
        ({invoke.H_TTL: "21601"}, "requestTTLSeconds"),
        ({invoke.H_TTL: "1e3"}, "requestTTLSeconds"),
        ({invoke.H_TIMEOUT: "0"}, "invocationTimeoutSeconds"),
        ({invoke.H_TIMEOUT: "3601"}, "invocationTimeoutSeconds"),
        ({invoke.H_INFERENCE_ID: "a/b"}, "inferenceId"),
        ({invoke.H_INFERENCE_ID: " leading-space"}, "inferenceId"),
        ({invoke.H_INFERENCE_ID: "é"}, "inferenceId"),
        ({invoke.H_ACCEPT: "x" * 1025}, "accept"),
        ({invoke.H_CUSTOM_ATTRIBUTES: "naïve"}, "customAttributes"),
        ({invoke.H_OUTPUT_PATH_EXTENSION: "s3://x"}, "s3OutputPathExtension"),
        ({invoke.H_FILENAME: "a.b.c"}, "filename"),
    ],
)
def test_bad_headers_name_the_member(headers: dict[str, str], member: str) -> None:
    with pytest.raises(invoke.InvokeError) as err:
        invoke.parse_headers({invoke.H_INPUT_LOCATION: LOC, **headers})
    assert err.value.code == "ValidationError" and err.value.status == 400
    assert f"at '{member}'" in err.value.message


@pytest.mark.parametrize(
    ("location", "schemes", "ok"),
    [
        (LOC, ("s3",), True),
        ("s3://bucket", ("s3",), False),
        ("s3://bucket/", ("s3",), False),
        ("file:///tmp/x", ("s3",), False),
        ("file:///tmp/x", ("s3", "file"), True),
        ("https://h/x", ("s3",), False),
        ("https://in-bucket.s3.us-east-1.amazonaws.com/async/ep/x.csv", ("s3", "https"), True),
        ("https://s3.amazonaws.com/in-bucket/async/ep/x.csv", ("s3", "https"), True),
        ("https://in-bucket.s3.amazonaws.com/async/ep/x.csv", ("s3",), False),
        ("https://example.com/in-bucket/x.csv", ("s3", "https"), False),
        ("https://s3.amazonaws.com/in-bucket", ("s3", "https"), False),
    ],
)
def test_input_locations(location: str, schemes: tuple[str, ...], ok: bool) -> None:
    assert invoke.location_ok(location, schemes) is ok


@given(
    st.integers(60, 21600),
    st.integers(1, 3600),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True),
)
def test_in_range_values_are_kept(ttl: int, timeout: int, inference_id: str) -> None:
    params = invoke.parse_headers(
        {
            invoke.H_INPUT_LOCATION: LOC,
            invoke.H_TTL: str(ttl),
            invoke.H_TIMEOUT: str(timeout),
            invoke.H_INFERENCE_ID: inference_id,
        }
    )
    request = invoke.build_request(params, "ep", OUT)
    assert (request.request_ttl_seconds, request.invocation_timeout_seconds) == (ttl, timeout)
    assert request.output_location == f"s3://out/async/ep/output/{inference_id}.out"
    assert request.failure_location == f"s3://out/async/ep/failures/{inference_id}-error.out"
    assert AsyncRequest.from_json(request.to_json()) == request


@pytest.mark.parametrize(
    "location",
    [
        "https://in-bucket.s3.us-east-1.amazonaws.com/async/ep/x.csv",
        "https://s3.us-east-1.amazonaws.com/in-bucket/async/ep/x.csv",
        "https://in-bucket.s3.amazonaws.com/async/ep/x.csv",
        LOC,
    ],
)
def test_s3_urls_are_queued_as_s3_uris(location: str) -> None:
    params = invoke.parse_headers({invoke.H_INPUT_LOCATION: location}, schemes=("s3", "https"))
    assert invoke.build_request(params, "ep", OUT).input_location == LOC


def test_payload_rules() -> None:
    located = invoke.parse_headers({invoke.H_INPUT_LOCATION: LOC})
    bare = invoke.parse_headers({})
    invoke.check_payload(located, 0)
    invoke.check_payload(bare, 10)  # an inline body where the front allows it (selfmaker up)
    for params, size, kwargs, needle in [
        (located, 5, {}, "mutually exclusive"),
        (bare, 0, {}, "inputLocation"),
        (bare, invoke.MAX_INLINE_BODY + 1, {}, "larger than"),
        (bare, 10, {"inline_body": False}, "InputLocation"),
    ]:
        with pytest.raises(invoke.InvokeError, match=needle):
            invoke.check_payload(params, size, **kwargs)


def test_within_input_locations() -> None:
    allowed = ("s3://in-bucket/async/ep/",)
    assert within(LOC, allowed)
    assert not within("s3://in-bucket/async/other/x", allowed)
    assert not within("s3://other-bucket/async/ep/x", allowed)


def test_multi_value_headers_take_the_last_value() -> None:
    assert event_headers({"multiValueHeaders": {"a": ["1", "2"]}, "headers": {"a": "0"}}) == {"a": "2"}


# --------------------------------------------------------------------------- the handler against moto


def _event(
    headers: dict[str, str], body: bytes = b"", *, method: str = "POST", b64: bool = False
) -> dict[str, Any]:
    return {
        "httpMethod": method,
        "path": "/endpoints/ep/async-invocations",
        "headers": headers,
        "body": base64.b64encode(body).decode() if b64 else body.decode(),
        "isBase64Encoded": b64,
        "requestContext": {"elb": {"targetGroupArn": "arn"}},
    }


@pytest.fixture
def front(moto_server: str) -> Front:
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="in-bucket")
    s3.put_object(Bucket="in-bucket", Key="async/ep/x.csv", Body=b"1,2,3,4\n")
    url = sqs.create_queue(QueueName=f"front-unit-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    settings = FrontSettings.from_env(
        {
            "SELFMAKER_ENDPOINT_NAME": "ep",
            "SELFMAKER_QUEUE_URL": url,
            "SELFMAKER_OUTPUT_PATH": OUT.output_path,
            "SELFMAKER_FAILURE_PATH": OUT.failure_path or "",
            "SELFMAKER_SUCCESS_TOPIC": OUT.success_topic or "",
            "SELFMAKER_INCLUDE_RESPONSE_IN": "SUCCESS_NOTIFICATION_TOPIC",
            "SELFMAKER_INPUT_LOCATIONS": "s3://in-bucket/async/ep/",
            "AWS_REGION": "us-east-1",
        }
    )
    return Front(settings, s3=s3, sqs=sqs)


def test_accepted_request_is_queued_as_the_worker_reads_it(front: Front) -> None:
    resp = front.handle(
        _event(
            {
                "x-amzn-sagemaker-inputlocation": LOC,
                "x-amzn-sagemaker-inference-id": "abc",
                "x-amzn-sagemaker-content-type": "text/csv",
            }
        )
    )
    assert resp["statusCode"] == 202 and json.loads(resp["body"]) == {"InferenceId": "abc"}
    assert resp["headers"][invoke.H_OUTPUT_LOCATION] == "s3://out/async/ep/output/abc.out"
    msgs = front.sqs.receive_message(QueueUrl=front.settings.queue_url, MaxNumberOfMessages=10)["Messages"]
    (request,) = [AsyncRequest.from_json(m["Body"]) for m in msgs]
    assert (request.inference_id, request.endpoint_name, request.input_location) == ("abc", "ep", LOC)
    assert request.success_topic == OUT.success_topic and request.error_topic is None
    assert request.include_response_in == ("SUCCESS_NOTIFICATION_TOPIC",)
    assert request.content_type == "text/csv"


def test_base64_bodies_are_measured_decoded(front: Front) -> None:
    resp = front.handle(_event({}, b"\x00" * (invoke.MAX_INLINE_BODY + 1), b64=True))
    assert resp["statusCode"] == 400 and "larger than 128000" in json.loads(resp["body"])["message"]
    bad = {**_event({}), "body": "***not base64***", "isBase64Encoded": True}
    assert json.loads(front.handle(bad)["body"])["message"] == "The request body is not valid base64."


def test_malformed_events_are_validation_errors_not_500s(front: Front) -> None:
    no_headers = {**_event({}), "headers": ["x-amzn-sagemaker-inputlocation: " + LOC]}
    body_object = {**_event({"x-amzn-sagemaker-inputlocation": LOC}), "body": {"a": 1}}
    body_object_b64 = {**body_object, "isBase64Encoded": True}
    for event in (no_headers, body_object, body_object_b64):
        resp = front.handle(event)
        assert resp["statusCode"] == 400 and resp["headers"]["x-amzn-ErrorType"] == "ValidationError", resp
    assert "inputLocation" in json.loads(front.handle(no_headers)["body"])["message"]
    assert json.loads(front.handle(body_object)["body"])["message"] == "The request body is not a string."
    not_alb = front.handle([1, 2])  # type: ignore[arg-type]
    assert not_alb["statusCode"] == 400 and not_alb["headers"]["x-amzn-ErrorType"] == "ValidationError"


def test_an_unexpected_failure_is_a_500_without_details(front: Front) -> None:
    broken = Front(
        FrontSettings(**{**front.settings.__dict__, "queue_url": front.settings.queue_url + "-gone"}),
        s3=front.s3,
        sqs=front.sqs,
    )
    resp = broken.handle(_event({"x-amzn-sagemaker-inputlocation": LOC}))
    assert resp["statusCode"] == 500 and resp["headers"]["x-amzn-ErrorType"] == "InternalFailure"
    assert json.loads(resp["body"])["message"] == "internal error"
    assert "Traceback" not in resp["body"] and "gone" not in resp["body"]


def test_handler_without_its_settings_fails_at_the_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SELFMAKER_ENDPOINT_NAME", raising=False)
    monkeypatch.setattr("serving.asyncq.front._FRONT", None)
    with pytest.raises(
        KeyError, match="SELFMAKER_ENDPOINT_NAME"
    ):  # a deployment bug surfaces at the first call
        handler(_event({}))


def test_header_names_and_ranges_are_botocores() -> None:
    """The names and limits the shared checks use are those of botocore's sagemaker-runtime model."""
    from botocore.loaders import Loader

    model = Loader().load_service_model("sagemaker-runtime", "service-2")
    shapes = model["shapes"]
    members = shapes[model["operations"]["InvokeEndpointAsync"]["input"]["shape"]]["members"]
    headers = {m["locationName"]: name for name, m in members.items() if m.get("location") == "header"}
    ours = {
        invoke.H_CONTENT_TYPE: "ContentType",
        invoke.H_ACCEPT: "Accept",
        invoke.H_CUSTOM_ATTRIBUTES: "CustomAttributes",
        invoke.H_INFERENCE_ID: "InferenceId",
        invoke.H_INPUT_LOCATION: "InputLocation",
        invoke.H_OUTPUT_PATH_EXTENSION: "S3OutputPathExtension",
        invoke.H_FILENAME: "Filename",
        invoke.H_TTL: "RequestTTLSeconds",
        invoke.H_TIMEOUT: "InvocationTimeoutSeconds",
    }
    assert ours == headers
    ttl = shapes[members["RequestTTLSeconds"]["shape"]]
    timeout = shapes[members["InvocationTimeoutSeconds"]["shape"]]
    assert (ttl["min"], ttl["max"]) == (invoke.MIN_TTL_SECONDS, 21600)
    assert (timeout["min"], timeout["max"]) == (invoke.MIN_INVOCATION_TIMEOUT_SECONDS, 3600)
    assert shapes[members["InferenceId"]["shape"]]["max"] == 64
    assert shapes[members["InputLocation"]["shape"]]["max"] == invoke.MAX_HEADER
    output = shapes[model["operations"]["InvokeEndpointAsync"]["output"]["shape"]]["members"]
    assert {m.get("locationName") for m in output.values() if m.get("location") == "header"} == {
        invoke.H_OUTPUT_LOCATION,
        invoke.H_FAILURE_LOCATION,
    }


# ---- keys with "?" and "#" are keys (common.uris.split_s3), not a URL's query and fragment ------------


def test_within_reads_keys_verbatim() -> None:
    allowed = ("s3://in-bucket/data#1/",)
    assert within("s3://in-bucket/data#1/x.csv", allowed)
    assert not within("s3://in-bucket/data#2/x.csv", allowed), "outside the prefix the role may read"
    assert not within("s3://in-bucket/data?1/x.csv", allowed)
    assert not within("https://in-bucket.s3.amazonaws.com/data#1/x", allowed), (
        "s3:// URIs only (the caller converts)"
    )


def test_input_key_with_query_and_fragment_characters_is_checked_whole(front: Front) -> None:
    key = "async/ep/a?b#c.csv"
    front.s3.put_object(Bucket="in-bucket", Key=key, Body=b"1,2,3,4\n")
    resp = front.handle(
        _event(
            {"x-amzn-sagemaker-inputlocation": f"s3://in-bucket/{key}", "x-amzn-sagemaker-inference-id": "qf"}
        )
    )
    assert resp["statusCode"] == 202, resp["body"]
    msgs = front.sqs.receive_message(QueueUrl=front.settings.queue_url, MaxNumberOfMessages=10)["Messages"]
    assert [AsyncRequest.from_json(m["Body"]).input_location for m in msgs] == [f"s3://in-bucket/{key}"]


@pytest.mark.parametrize("location", [LOC + "x" * 1100, LOC + "é", LOC + "\r\nX-Injected: 1"])
def test_an_unusable_input_location_is_shown_not_called_null(location: str) -> None:
    # an over-long or non-ASCII InputLocation was reported as "Value null", which reads as "missing"
    with pytest.raises(invoke.InvokeError) as err:
        invoke.parse_headers({invoke.H_INPUT_LOCATION: location})
    assert err.value.status == 400 and "at 'inputLocation'" in err.value.message
    assert "Value null" not in err.value.message and f"Value '{location[:20]}" in err.value.message
