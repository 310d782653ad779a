"""The model server's runtime path: what the gateway forwards, answered as sagemaker-runtime answers it.

Real servers on 127.0.0.1, called with boto3's own ``sagemaker-runtime`` client whose ``endpoint_url``
is the model server itself (what a client does against a deployed stack's ``endpointUrl``).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from serving_helpers import Server

from serving.errors import error_body, runtime_error

ROW = b"2.0,1.0,0.0,0.0\n"
ROWS = [f"{i * 0.5 - 2},{1 - i * 0.25},0.5,{i}\n".encode() for i in range(16)]


@pytest.fixture(scope="module")
def server(serve: Callable[..., Server], binary_model: Path) -> Server:
    """Two inline workers (batching on) serving variant ``challenger`` of endpoint ``churn``, 1 MB limit."""
    return serve(
        "--model-dir",
        str(binary_model),
        workers=2,
        env={
            "SELFMAKER_ENDPOINT_NAME": "churn",
            "SELFMAKER_VARIANT_NAME": "challenger",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1",
        },
    )


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # boto3 signs its requests; the gateway (and so the model server) ignores the signature
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"):
        monkeypatch.delenv(key, raising=False)
    yield


def runtime(server: Server) -> Any:
    """boto3's sagemaker-runtime client pointed straight at the model server (no retries: every answer
    counts)."""
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
    )


def plain(server: Server, body: bytes, content_type: str = "text/csv", **headers: str) -> requests.Response:
    return requests.post(
        server.url + "/invocations", data=body, headers={"Content-Type": content_type, **headers}, timeout=10
    )


def test_invoke_endpoint_answers_like_invocations_with_the_variant(server: Server) -> None:
    client = runtime(server)
    answer = client.invoke_endpoint(
        EndpointName="churn", Body=ROW, ContentType="text/csv", Accept="application/json"
    )
    expected = plain(server, ROW, Accept="application/json")
    assert expected.status_code == 200
    assert answer["Body"].read() == expected.content
    assert answer["ContentType"] == expected.headers["Content-Type"] == "application/json"
    assert answer["InvokedProductionVariant"] == "challenger"
    # the load balancer already chose the variant: the header is not the server's business
    targeted = client.invoke_endpoint(
        EndpointName="churn", Body=ROW, ContentType="text/csv", TargetVariant="champion"
    )
    assert targeted["InvokedProductionVariant"] == "challenger"
    assert targeted["Body"].read() == plain(server, ROW).content
    assert "x-Amzn-Invoked-Production-Variant" not in plain(server, ROW).headers  # /invocations is unchanged


def test_concurrent_runtime_requests_batched_together_keep_their_own_answers(server: Server) -> None:
    client = runtime(server)
    expected = [plain(server, row).json()["predictions"][0] for row in ROWS]

    def call(row: bytes) -> tuple[dict[str, Any], str]:
        out = client.invoke_endpoint(EndpointName="churn", Body=row, ContentType="text/csv")
        return json.loads(out["Body"].read())["predictions"][0], out["InvokedProductionVariant"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, ROWS * 4))
    for (got, variant), want in zip(answers, expected * 4, strict=True):
        # one model run over stacked records rounds float32 a little differently from a run of one
        assert variant == "challenger" and got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], rel=1e-5, abs=1e-6)


def test_bad_input_is_a_model_error_carrying_the_original_answer(server: Server) -> None:
    client = runtime(server)
    original = plain(server, b"1.0,oops\n")
    assert original.status_code == 400
    with pytest.raises(client.exceptions.ModelError) as err:
        client.invoke_endpoint(EndpointName="churn", Body=b"1.0,oops\n", ContentType="text/csv")
    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400
    assert response["OriginalMessage"] == original.text
    assert "Received client error (400) from primary" in response["Error"]["Message"]
    with pytest.raises(client.exceptions.ModelError) as unsupported:
        client.invoke_endpoint(EndpointName="churn", Body=b"{}", ContentType="application/x-nope")
    assert unsupported.value.response["OriginalStatusCode"] == 415


def test_unknown_endpoint_is_a_validation_error(server: Server) -> None:
    client = runtime(server)
    with pytest.raises(client.exceptions.ClientError) as other:
        client.invoke_endpoint(EndpointName="fraud", Body=ROW, ContentType="text/csv")
    assert other.value.response["Error"]["Code"] == "ValidationError"
    assert other.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "Endpoint fraud not found" in other.value.response["Error"]["Message"]
    # anything else under /endpoints/ is no runtime route
    assert requests.post(server.url + "/endpoints/churn/other", data=ROW, timeout=10).status_code == 404
    assert requests.get(server.url + "/endpoints/churn/invocations", timeout=10).status_code in (404, 405)
    assert client.invoke_endpoint(EndpointName="churn", Body=ROW, ContentType="text/csv")["Body"].read()


def test_response_stream_carries_the_answer_in_payload_parts(server: Server) -> None:
    client = runtime(server)
    body = b"".join(ROWS)
    out = client.invoke_endpoint_with_response_stream(
        EndpointName="churn", Body=body, ContentType="text/csv", Accept="text/csv"
    )
    parts = [event["PayloadPart"]["Bytes"] for event in out["Body"]]
    expected = plain(server, body, Accept="text/csv")
    assert b"".join(parts) == expected.content and parts
    assert out["ContentType"] == "text/csv"
    assert out["InvokedProductionVariant"] == "challenger"


HOOKS = """
    import json

    def model_fn(model_dir, context):
        return {"offset": 1.5}

    def input_fn(input_data, content_type, context):
        return json.loads(input_data)

    def predict_fn(data, model):
        if data.get("explode"):
            raise RuntimeError("secret detail")
        return {"value": data["x"] + model["offset"]}

    def output_fn(prediction, accept, context):
        attrs = context.get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes")
        context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes", f"seen={attrs}")
        return json.dumps(prediction), accept
"""


def test_custom_attributes_pass_through_and_a_crash_is_a_server_model_error(
    serve: Callable[..., Server], binary_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = tmp_path_factory.mktemp("hooks") / "model"
    shutil.copytree(binary_model, model)
    (model / "code").mkdir()
    (model / "code" / "inference.py").write_text(textwrap.dedent(HOOKS))
    # no endpoint name: a local server answers the runtime path for any name, as variant AllTraffic
    hooks = serve("--model-dir", str(model), env={"SELFMAKER_INSTALL_REQUIREMENTS": "false"})
    client = runtime(hooks)
    out = client.invoke_endpoint(
        EndpointName="anything",
        Body=b'{"x": 1}',
        ContentType="application/json",
        Accept="application/json",
        CustomAttributes="trace=7",
    )
    assert out["Body"].read() == b'{"value": 2.5}'
    assert out["CustomAttributes"] == "seen=trace=7"
    assert out["InvokedProductionVariant"] == "AllTraffic"
    with pytest.raises(client.exceptions.ModelError) as err:
        client.invoke_endpoint(
            EndpointName="anything", Body=b'{"explode": true}', ContentType="application/json"
        )
    response = err.value.response
    assert response["OriginalStatusCode"] == 500
    assert response["OriginalMessage"] == '{"error":"internal error","status":500}'
    assert "secret detail" not in str(response)
    assert "Received server error (500) from primary" in response["Error"]["Message"]


@pytest.mark.parametrize(
    ("status", "code", "out_status"),
    [
        (413, "ValidationError", 400),
        (503, "ServiceUnavailable", 503),
        (400, "ModelError", 424),
        (406, "ModelError", 424),
        (500, "ModelError", 424),
    ],
)
def test_runtime_error_shapes(status: int, code: str, out_status: int) -> None:
    """What the runtime path answers for each answer /invocations can give (an oversized body is not sent
    over HTTP here: the server answers 413 before reading it, which races the client's upload)."""
    original = error_body(status, "request body of 2000000 bytes exceeds the 1 MB limit")
    got_status, got_code, body = runtime_error(status, original, endpoint="churn", variant="champion")
    parsed = json.loads(body)
    assert (got_status, got_code, parsed["__type"]) == (out_status, code, code)
    if code == "ModelError":
        assert parsed["OriginalStatusCode"] == status and parsed["OriginalMessage"] == original.decode()
        assert "endpoint churn, variant champion" in parsed["Message"]
    else:
        assert "OriginalStatusCode" not in parsed
        assert parsed["Message"] == (
            "internal error"
            if status >= 500 and status != 503
            else "request body of 2000000 bytes exceeds the 1 MB limit"
        )
