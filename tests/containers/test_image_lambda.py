"""selfmaker's image in its ``lambda`` mode, run as AWS Lambda runs a container-image function: a
read-only root file system with a writable /tmp, an unprivileged user, the Lambda environment, and a
Runtime API (the test one of tests/lambdakit.py) to poll. The model comes from moto's S3; ALB events go
in and the answers come out."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from containers_helpers import run
from lambdakit import (
    N_FEATURES,
    RuntimeApi,
    alb_body,
    alb_event,
    alb_headers,
    build_xgboost_model,
    lambda_environment,
)

BUCKET = "lambda-image-models"
PATH = "/endpoints/churn/invocations"


@pytest.fixture(scope="module")
def model_uri(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    model = build_xgboost_model(tmp_path_factory.mktemp("lambda-image") / "model")
    archive = model.parent / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model.iterdir()):
            tar.add(path, arcname=path.name)
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(archive), BUCKET, "models/churn/model.tar.gz")
    return f"s3://{BUCKET}/models/churn/model.tar.gz"


@pytest.fixture(scope="module")
def function(
    engine: str, selfmaker_image: str, model_uri: str, moto_server: str
) -> Iterator[tuple[RuntimeApi, str]]:
    """The image started in ``lambda`` mode against a test Runtime API; yields (api, container name)."""
    name = f"lambda-{uuid.uuid4().hex[:8]}"
    with RuntimeApi() as api:
        env = {
            **lambda_environment(api.address, task_root="/var/task", tmp="/tmp"),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_ENDPOINT_URL_S3": moto_server,
            "SELFMAKER_MODEL_DATA": model_uri,
            "SELFMAKER_ENDPOINT_NAME": "churn",
            "SELFMAKER_VARIANT_NAME": "Serverless",
        }
        env.pop("LAMBDA_TASK_ROOT")  # not a directory of this image; Lambda's own images have /var/task
        env.pop("LAMBDA_RUNTIME_DIR")
        command = [
            engine,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--user",
            "993:993",
            "--memory",
            "2g",
        ]
        for key, value in env.items():
            command += ["-e", f"{key}={value}"]
        run([*command, selfmaker_image, "lambda"])
        try:

            def alive() -> bool:
                state = subprocess.run(
                    [engine, "inspect", "--format", "{{.State.Running}}", name],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                return state.stdout.strip().lower() == "true"

            try:
                api.wait_polling(120, alive)
            except AssertionError as exc:
                logs = subprocess.run(
                    [engine, "logs", name], capture_output=True, text=True, timeout=60, check=False
                )
                raise AssertionError(f"{exc}\n--- container log ---\n{logs.stdout}{logs.stderr}") from None
            yield api, name
        finally:
            subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=120, check=False)


def call(api: RuntimeApi, event: dict[str, Any]) -> dict[str, Any]:
    outcome = api.invoke(event, timeout=60)
    assert outcome.kind == "response", outcome
    return outcome.payload


def test_image_answers_alb_events_in_lambda_mode(function: tuple[RuntimeApi, str]) -> None:
    api, _ = function
    rows = np.random.default_rng(5).normal(size=(4, N_FEATURES)).astype(np.float32)
    csv = "\n".join(",".join(f"{v:.5f}" for v in row) for row in rows).encode()
    by_csv = call(
        api, alb_event(PATH, csv, headers={"Content-Type": "text/csv", "Accept": "application/json"})
    )
    assert by_csv["statusCode"] == 200, alb_body(by_csv)
    assert alb_headers(by_csv)["x-amzn-invoked-production-variant"] == "Serverless"
    buf = io.BytesIO()
    np.save(buf, rows)
    by_npy = call(
        api,
        alb_event(
            PATH,
            buf.getvalue(),
            headers={"Content-Type": "application/x-npy", "Accept": "application/json"},
            binary=True,
        ),
    )
    assert by_npy["statusCode"] == 200, alb_body(by_npy)
    assert json.loads(alb_body(by_npy)) == json.loads(alb_body(by_csv))
    by_json = call(
        api,
        alb_event(
            PATH,
            json.dumps(rows.tolist()).encode(),
            headers={"Content-Type": "application/json"},
            multi_value=True,
        ),
    )
    assert by_json["multiValueHeaders"]["X-Amzn-Invoked-Production-Variant"] == ["Serverless"]
    bad = call(api, alb_event("/invocations", b"1,2,3", headers={"Content-Type": "text/csv"}))
    assert bad["statusCode"] == 400  # the model server's own answer
    assert json.loads(alb_body(bad))["status"] == 400
    model_error = call(api, alb_event(PATH, b"1,2,3", headers={"Content-Type": "text/csv"}))
    assert model_error["statusCode"] == 424  # through the runtime path: sagemaker-runtime's ModelError
    assert alb_headers(model_error)["x-amzn-errortype"] == "ModelError"
    assert json.loads(alb_body(model_error))["OriginalStatusCode"] == 400


def test_image_wrote_only_under_tmp(engine: str, function: tuple[RuntimeApi, str]) -> None:
    _, name = function
    # the root file system is read-only: the model (and anything else) can only be under /tmp
    out = run(
        [engine, "exec", name, "sh", "-c", "ls /tmp/selfmaker/model/model && touch /opt/x 2>&1 || true"]
    )
    assert "model.onnx" in out.stdout
    assert "Read-only file system" in out.stdout + out.stderr
