"""The serverless variant's Lambda function for real: ``python -m serving.lambda_handler`` run by
``awslambdaric`` against a test Lambda Runtime API, in the environment Lambda gives a function, with the
model in moto's S3 and ALB events in and out; answers and errors compared with the model server's."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import requests
from lambdakit import (
    N_FEATURES,
    AlbShim,
    RuntimeApi,
    alb_body,
    alb_event,
    alb_headers,
    build_xgboost_model,
    lambda_environment,
)
from serving_helpers import ROOT, Server, tar_dir

BUCKET = "lambda-models"
PATH = "/endpoints/churn/invocations"


@pytest.fixture(scope="module")
def xgb_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_xgboost_model(tmp_path_factory.mktemp("xgb") / "model")


@pytest.fixture(scope="module")
def model_uri(xgb_model: Path, moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    archive = tar_dir(xgb_model, tmp_path_factory.mktemp("xgb-archive") / "model.tar.gz")
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(archive), BUCKET, "models/churn/model.tar.gz")
    return f"s3://{BUCKET}/models/churn/model.tar.gz"


class Sandbox:
    """One function process (a Lambda sandbox) talking to its own test Runtime API."""

    def __init__(self, api: RuntimeApi, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.api, self.proc, self.log_path = api, proc, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, event: dict[str, Any]) -> dict[str, Any]:
        outcome = self.api.invoke(event, timeout=60)
        assert outcome.kind == "response", f"{outcome}\n--- log ---\n{self.log()}"
        return outcome.payload


def start_sandbox(
    api: RuntimeApi,
    tmp: Path,
    model_uri: str,
    moto: str,
    *,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Sandbox:
    task_root = tmp / "task"
    sandbox_tmp = tmp / "tmp"
    task_root.mkdir(parents=True, exist_ok=True)
    sandbox_tmp.mkdir(parents=True, exist_ok=True)
    full_env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        **lambda_environment(api.address, task_root=str(task_root), tmp=str(sandbox_tmp)),
        # the function's own environment (set by the ServerlessEndpoint component)
        "SELFMAKER_MODEL_DATA": model_uri,
        "SELFMAKER_ENDPOINT_NAME": "churn",
        "SELFMAKER_VARIANT_NAME": "Serverless",
        "SELFMAKER_LAMBDA_STATE_DIR": str(sandbox_tmp / "selfmaker"),
        "AWS_ENDPOINT_URL_S3": moto,
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "4",  # as the ServerlessEndpoint component sets it
        **(env or {}),
    }
    log_path = tmp / "function.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            command or [sys.executable, "-m", "serving.lambda_handler"],
            cwd=str(task_root),
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Sandbox(api, proc, log_path)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sandbox(model_uri: str, moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with RuntimeApi() as api:
        box = start_sandbox(api, tmp_path_factory.mktemp("sandbox"), model_uri, moto_server)
        try:
            api.wait_polling(60, box.alive)
            yield box
        finally:
            stop(box.proc)


@pytest.fixture(scope="module")
def model_server(serve: Callable[..., Server], xgb_model: Path) -> Server:
    return serve("--model-dir", str(xgb_model))


def rows(n: int = 3) -> np.ndarray:
    return np.random.default_rng(11).normal(size=(n, N_FEATURES)).astype(np.float32)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content_type", "accept", "body", "binary"),
    [
        ("text/csv", "text/csv", "\n".join(",".join(f"{v:.4f}" for v in r) for r in rows()).encode(), False),
        ("application/json", "application/json", json.dumps({"instances": rows().tolist()}).encode(), False),
        ("application/x-npy", "application/x-npy", npy(rows()), True),
        ("application/x-npy", "application/json", npy(rows()), True),
    ],
    ids=["csv", "json", "npy-npy", "npy-json"],
)
def test_answers_equal_the_model_servers(
    sandbox: Sandbox, model_server: Server, content_type: str, accept: str, body: bytes, binary: bool
) -> None:
    headers = {"Content-Type": content_type, "Accept": accept}
    response = sandbox.call(alb_event(PATH, body, headers=headers, binary=binary))
    expected = requests.post(model_server.url + "/invocations", data=body, headers=headers, timeout=30)
    assert expected.status_code == 200, expected.text
    assert response["statusCode"] == 200, alb_body(response)
    assert response["isBase64Encoded"] is True
    got = alb_headers(response)
    assert got["content-type"] == expected.headers["Content-Type"]
    assert got["x-amzn-invoked-production-variant"] == "Serverless"
    assert got["x-amzn-requestid"]
    assert alb_body(response) == expected.content  # byte for byte, binary .npy included
    if accept == "application/x-npy":
        assert np.load(io.BytesIO(alb_body(response))).shape[0] == 3


BAD_PAYLOADS = [
    ("text/csv", b"1,2,3\n"),  # too few features for the model's signature
    ("application/json", b'{"instances": [[1, 2'),  # malformed
    ("application/x-npy", b"\x93NUMPY garbage"),
    ("image/png", b"\x89PNG"),  # unsupported content type
]
BAD_IDS = ["csv-features", "json-malformed", "npy-garbage", "unsupported-type"]


@pytest.mark.parametrize(("content_type", "body"), BAD_PAYLOADS, ids=BAD_IDS)
def test_bad_payload_gets_the_model_servers_4xx(
    sandbox: Sandbox, model_server: Server, content_type: str, body: bytes
) -> None:
    headers = {"Content-Type": content_type}
    expected = requests.post(model_server.url + "/invocations", data=body, headers=headers, timeout=30)
    assert 400 <= expected.status_code < 500
    # the container contract's path: exactly the model server's answer
    plain = sandbox.call(alb_event("/invocations", body, headers=headers, binary=True))
    assert plain["statusCode"] == expected.status_code
    assert json.loads(alb_body(plain)) == expected.json()
    assert alb_headers(plain)["content-type"] == "application/json"
    # the runtime path: sagemaker-runtime's ModelError carrying the model server's status and message
    runtime = sandbox.call(alb_event(PATH, body, headers=headers, binary=True))
    assert runtime["statusCode"] == 424
    error = json.loads(alb_body(runtime))
    assert alb_headers(runtime)["x-amzn-errortype"] == "ModelError"
    assert error["OriginalStatusCode"] == expected.status_code
    assert json.loads(error["OriginalMessage"]) == expected.json()
    assert "Traceback" not in alb_body(runtime).decode()
    assert sandbox.alive()


def test_boto3_sagemaker_runtime_through_the_alb(sandbox: Sandbox, model_server: Server) -> None:
    """boto3's sagemaker-runtime client against an ALB-like front of the function: the answer and the
    variant as from SageMaker, and a bad payload raises ModelError with the model server's status."""
    from botocore.config import Config

    body = "\n".join(",".join(f"{v:.4f}" for v in r) for r in rows(2)).encode()
    expected = requests.post(
        model_server.url + "/invocations",
        data=body,
        headers={"Content-Type": "text/csv", "Accept": "application/json"},
        timeout=30,
    )
    with AlbShim(sandbox.api) as alb:
        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=alb.url,
            region_name="us-east-1",
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )
        answer = client.invoke_endpoint(
            EndpointName="churn",
            Body=body,
            ContentType="text/csv",
            Accept="application/json",
            CustomAttributes="trace=1",
        )
        assert answer["InvokedProductionVariant"] == "Serverless"
        assert answer["ContentType"] == "application/json"
        assert answer["Body"].read() == expected.content
        with pytest.raises(client.exceptions.ModelError) as raised:
            client.invoke_endpoint(EndpointName="churn", Body=b"1,2,3", ContentType="text/csv")
        refused = requests.post(
            model_server.url + "/invocations", data=b"1,2,3", headers={"Content-Type": "text/csv"}, timeout=30
        )
        assert raised.value.response["OriginalStatusCode"] == refused.status_code == 400
        assert json.loads(raised.value.response["OriginalMessage"]) == refused.json()
        with pytest.raises(client.exceptions.ValidationError):
            client.invoke_endpoint(
                EndpointName="churn", Body=body, ContentType="text/csv", TargetVariant="Blue"
            )


def test_multi_value_headers_answer_in_kind(sandbox: Sandbox) -> None:
    body = ",".join(["0.5"] * N_FEATURES).encode()
    response = sandbox.call(
        alb_event(
            PATH,
            body,
            headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Custom-Attributes": "trace=1"},
            multi_value=True,
        )
    )
    assert response["statusCode"] == 200
    assert "headers" not in response
    assert response["multiValueHeaders"]["X-Amzn-Invoked-Production-Variant"] == ["Serverless"]
    assert json.loads(alb_body(response))  # the xgboost response format: a JSON document


def test_health_check_routes_and_methods(sandbox: Sandbox) -> None:
    ping = sandbox.call(alb_event("/ping", method="GET"))
    assert ping["statusCode"] == 200
    assert sandbox.call(alb_event("/endpoints/other/invocations", b"1"))["statusCode"] == 404
    assert sandbox.call(alb_event("/admin", b""))["statusCode"] == 404
    wrong = sandbox.call(alb_event(PATH, method="GET"))
    assert wrong["statusCode"] == 405
    assert json.loads(alb_body(wrong))["status"] == 405


def test_bad_base64_and_wrong_target_variant_are_400(sandbox: Sandbox) -> None:
    event = alb_event("/invocations", b"x", headers={"Content-Type": "text/csv"}, binary=True)
    event["body"] = "not base64!!"
    bad = sandbox.call(event)
    assert bad["statusCode"] == 400
    assert "base64" in json.loads(alb_body(bad))["error"]
    other = sandbox.call(
        alb_event(
            PATH,
            b"1,2,3,4,5,6",
            headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Variant": "Blue"},
        )
    )
    assert other["statusCode"] == 400
    assert alb_headers(other)["x-amzn-errortype"] == "ValidationError"
    assert "Blue" in json.loads(alb_body(other))["Message"]


def test_a_malformed_event_is_answered_not_a_function_error(sandbox: Sandbox) -> None:
    # headers that are not a mapping used to raise out of the handler: a function error, a bare 502 at the ALB
    for key in ("headers", "multiValueHeaders"):
        event = alb_event(PATH, b"1,2", headers={"Content-Type": "text/csv"})
        event.pop("headers", None)
        event[key] = ["Content-Type: text/csv"]
        response = sandbox.call(event)
        assert 400 <= response["statusCode"] < 500 and "__type" in json.loads(alb_body(response))
    # an event that is not an ALB request at all (a direct invoke with other JSON)
    response = sandbox.call([1, 2])  # type: ignore[arg-type]
    assert (
        response["statusCode"] == 400
        and "not an Application Load Balancer" in json.loads(alb_body(response))["error"]
    )
    assert sandbox.alive()


def test_oversized_payload_and_header_injection(sandbox: Sandbox) -> None:
    big = b"0" * (4 * 1024 * 1024 + 1)
    plain = sandbox.call(alb_event("/invocations", big, headers={"Content-Type": "text/csv"}, binary=True))
    assert plain["statusCode"] == 413  # the model server's answer
    runtime = sandbox.call(alb_event(PATH, big, headers={"Content-Type": "text/csv"}, binary=True))
    assert runtime["statusCode"] == 400  # sagemaker-runtime's: the request is refused, no model ran
    assert alb_headers(runtime)["x-amzn-errortype"] == "ValidationError"
    assert "4 MB" in json.loads(alb_body(runtime))["Message"]
    # a CR/LF smuggled into a header never reaches a response header
    response = sandbox.call(
        alb_event(
            PATH,
            ",".join(["0.5"] * N_FEATURES).encode(),
            headers={
                "Content-Type": "text/csv",
                "X-Amzn-SageMaker-Target-Variant": "Serverless\r\nSet-Cookie: x=1",
            },
        )
    )
    assert response["statusCode"] == 400
    assert all("\n" not in v and "\r" not in v for v in alb_headers(response).values())
    assert sandbox.alive()


def test_model_loaded_once_per_sandbox_into_tmp(
    sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for _ in range(3):
        sandbox.call(
            alb_event(PATH, ",".join(["0.1"] * N_FEATURES).encode(), headers={"Content-Type": "text/csv"})
        )
    text = sandbox.log()
    assert text.count("model ready for variant Serverless") == 1, text
    unpacked = list(Path(sandbox.log_path.parent / "tmp" / "selfmaker" / "model").rglob("model.onnx"))
    assert unpacked, "the model was not unpacked under the sandbox's /tmp"


def test_missing_model_is_an_init_error(moto_server: str, model_uri: str, tmp_path: Path) -> None:
    with RuntimeApi() as api:
        box = start_sandbox(api, tmp_path, f"s3://{BUCKET}/models/nothing/model.tar.gz", moto_server)
        try:
            assert box.proc.wait(timeout=60) == 1, box.log()
        finally:
            stop(box.proc)
        ((error_type, payload),) = api.init_errors
        assert error_type == "Runtime.ModelLoadError"
        assert payload["errorType"] == "Runtime.ModelLoadError"
        assert "models/nothing/model.tar.gz" in payload["errorMessage"]
        assert api.polls == 0


def test_plain_awslambdaric_entry_loads_on_first_call(
    model_uri: str, moto_server: str, tmp_path: Path
) -> None:
    """``python -m awslambdaric serving.lambda_handler.handler`` (the handler named in _HANDLER) works too."""
    with RuntimeApi() as api:
        box = start_sandbox(
            api,
            tmp_path,
            model_uri,
            moto_server,
            command=[sys.executable, "-m", "awslambdaric", "serving.lambda_handler.handler"],
        )
        try:
            api.wait_polling(60, box.alive)
            assert box.call(alb_event("/ping", method="GET"))["statusCode"] == 503  # not loaded yet
            response = box.call(
                alb_event(PATH, ",".join(["0.3"] * N_FEATURES).encode(), headers={"Content-Type": "text/csv"})
            )
            assert response["statusCode"] == 200, alb_body(response)
            assert box.call(alb_event("/ping", method="GET"))["statusCode"] == 200
        finally:
            stop(box.proc)


def test_hooks_requirements_install_under_tmp(
    moto_server: str, tmp_path: Path, xgb_model: Path, model_uri: str, make_wheel: Callable[..., Path]
) -> None:
    """A model with code/inference.py and code/requirements.txt: the requirement goes to /tmp (the
    environment is read-only in Lambda) and the hooks import it."""
    import shutil

    model = tmp_path / "hooks-model"
    shutil.copytree(xgb_model, model)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "lambda_extra_dep", "SCALE = 2.0\n")
    (model / "code").mkdir()
    (model / "code" / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\nlambda_extra_dep\n")
    (model / "code" / "inference.py").write_text(
        "import json\nimport lambda_extra_dep\n\n"
        "def model_fn(model_dir):\n    return lambda_extra_dep.SCALE\n\n"
        "def transform_fn(model, data, content_type, accept):\n"
        "    return json.dumps({'scale': model, 'type': content_type}), 'application/json'\n"
    )
    archive = tar_dir(model, tmp_path / "hooks.tar.gz")
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.upload_file(str(archive), BUCKET, "models/hooks/model.tar.gz")
    with RuntimeApi() as api:
        box = start_sandbox(api, tmp_path / "box", f"s3://{BUCKET}/models/hooks/model.tar.gz", moto_server)
        try:
            api.wait_polling(120, box.alive)
            response = box.call(alb_event(PATH, b"1,2", headers={"Content-Type": "text/csv"}))
            assert response["statusCode"] == 200, alb_body(response)
            assert json.loads(alb_body(response)) == {"scale": 2.0, "type": "text/csv"}
            assert list((tmp_path / "box" / "tmp" / "selfmaker" / "site-packages").glob("lambda_extra_dep*"))
        finally:
            stop(box.proc)
