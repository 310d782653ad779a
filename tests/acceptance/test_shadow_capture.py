"""Shadow variants and data capture through the whole product: boto3 → `selfmaker up` → model servers,
capture files in moto's S3 and under file://."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from testkit import wait_until

ROOT = Path(__file__).resolve().parents[2]


import platform_helpers as helpers  # noqa: E402 - on sys.path via conftest.py

ROWS = [f"{i * 0.1:.1f},{1 - i * 0.2:.1f},{i % 3 - 1}.0,0.5" for i in range(8)]

FAILING_MODEL = """
def model_fn(model_dir):
    return "broken"

def predict_fn(data, model):
    raise RuntimeError("this shadow model always fails")
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[Any]:
    env = helpers.moto_env(moto_server, SELFMAKER_SERVERLESS_FORK_ALL_PROCESS_VARIANTS="true")
    with helpers.running(tmp_path_factory.mktemp("shadow-home"), env) as server:
        yield server


@pytest.fixture(scope="module")
def models(sm: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    helpers.make_model(sm, "sc-a", helpers.build_classifier_tar(root / "a", seed=0).as_uri())
    helpers.make_model(sm, "sc-b", helpers.build_classifier_tar(root / "b", seed=7).as_uri())
    failing = root / "failing" / "model.tar.gz"
    failing.parent.mkdir(parents=True)
    with tarfile.open(failing, "w:gz") as tar:
        data = FAILING_MODEL.encode()
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    helpers.make_model(sm, "sc-fail", failing.as_uri())
    return {"a": "sc-a", "b": "sc-b", "fail": "sc-fail"}


def deploy(sm: Any, name: str, model: str, shadow_model: str | None = None, **config: Any) -> None:
    params: dict[str, Any] = {
        "EndpointConfigName": f"{name}-cfg",
        "ProductionVariants": [helpers.variant("primary", model)],
        **config,
    }
    if shadow_model:
        params["ShadowProductionVariants"] = [helpers.variant("shadow", shadow_model)]
    sm.create_endpoint_config(**params)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")


def shadow_metrics(platform: Any, endpoint: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in requests.get(platform.url + "/metrics", timeout=10).text.splitlines():
        marker = f'{{endpoint="{endpoint}",variant="shadow"}} '
        if line.startswith("selfmaker_shadow_") and marker in line:
            name, value = line.split(marker)
            out[name.removeprefix("selfmaker_shadow_")] = float(value)
    return out


def invocations_logged(platform: Any, endpoint: str, variant: str) -> int:
    """POSTs the variant's own model servers answered, counted from their access logs."""
    logs = platform.home / "logs" / "endpoints" / endpoint
    return sum(
        log.read_text(errors="replace").count('"POST /invocations')
        for log in logs.glob(f"{endpoint}-{variant}-*.log")
    )


def invoke_all(smr: Any, endpoint: str, *, inference_ids: bool = False) -> list[bytes]:
    answers = []
    for i, row in enumerate(ROWS):
        extra = {"InferenceId": f"inf-{endpoint}-{i}"} if inference_ids else {}
        resp = smr.invoke_endpoint(
            EndpointName=endpoint,
            Body=row.encode(),
            ContentType="text/csv",
            Accept="application/json",
            **extra,
        )
        assert resp["InvokedProductionVariant"] == "primary"
        answers.append(resp["Body"].read())
    return answers


@pytest.fixture(scope="module")
def endpoints(
    sm: Any, models: dict[str, str], tmp_path_factory: pytest.TempPathFactory, moto_server: str
) -> dict[str, Any]:
    """Every endpoint of this module, created together so their model servers start in parallel."""
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    bucket = f"capture-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    local = tmp_path_factory.mktemp("capture")
    deploy(sm, "sc-plain", models["a"])
    deploy(
        sm,
        "sc-same",
        models["a"],
        models["a"],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://{bucket}/capture",
            "CaptureOptions": [{"CaptureMode": "InputAndOutput"}],
            "CaptureContentTypeHeader": {
                "CsvContentTypes": ["text/csv"],
                "JsonContentTypes": ["application/json"],
            },
        },
    )
    deploy(sm, "sc-diff", models["a"], models["b"])
    deploy(
        sm,
        "sc-failing",
        models["a"],
        models["fail"],
        DataCaptureConfig={
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": local.as_uri(),
            "CaptureOptions": [{"CaptureMode": "Input"}],
        },
    )
    for name in ("sc-plain", "sc-same", "sc-diff", "sc-failing"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=helpers.WAIT)
    return {"s3": s3, "bucket": bucket, "local": local}


def test_shadow_receives_copies_and_primary_answers_are_unchanged(
    platform: Any, sm: Any, smr: Any, endpoints: dict[str, Any]
) -> None:
    desc = sm.describe_endpoint(EndpointName="sc-same")
    assert [v["VariantName"] for v in desc["ShadowProductionVariants"]] == ["shadow"]
    plain = invoke_all(smr, "sc-plain")
    assert invoke_all(smr, "sc-same", inference_ids=True) == plain
    assert invoke_all(smr, "sc-diff") == plain
    n = len(ROWS)
    wait_until(
        lambda: shadow_metrics(platform, "sc-same").get("compared_total") == n, what="shadow copies compared"
    )
    wait_until(
        lambda: shadow_metrics(platform, "sc-diff").get("compared_total") == n, what="shadow copies compared"
    )
    same, diff = shadow_metrics(platform, "sc-same"), shadow_metrics(platform, "sc-diff")
    assert same["requests_total"] == n and same["errors_total"] == 0 and same["mismatches_total"] == 0
    assert diff["requests_total"] == n and diff["errors_total"] == 0 and diff["mismatches_total"] == n
    assert same["latency_seconds_count"] == n and same["latency_seconds_sum"] > 0
    # the shadow's own model servers logged every copy
    assert invocations_logged(platform, "sc-same", "shadow") == n
    assert invocations_logged(platform, "sc-plain", "primary") == n
    # `selfmaker status` (another process, reading the state store) shows the same counters
    wanted = f"shadow shadow: copies={n} errors=0 dropped=0 mismatches={n}/{n}"

    def status_shows() -> bool:
        out = subprocess.run(
            [sys.executable, "-m", "selfmaker", "status", "--home", str(platform.home)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        section = out.split("sc-diff", 1)[1].split("\n  sc-", 1)[0] if "sc-diff" in out else ""
        return wanted in section

    wait_until(status_shows, timeout=30, what="shadow counters in selfmaker status")


def test_failing_shadow_does_not_fail_the_primary(platform: Any, smr: Any, endpoints: dict[str, Any]) -> None:
    answers = invoke_all(smr, "sc-failing")
    assert all(json.loads(a)["predictions"] for a in answers)
    wait_until(
        lambda: shadow_metrics(platform, "sc-failing").get("errors_total") == len(ROWS),
        what="shadow errors counted",
    )
    assert shadow_metrics(platform, "sc-failing")["mismatches_total"] == 0


def _capture_lines(keys_and_bodies: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    return [
        json.loads(line) for _, body in keys_and_bodies for line in body.decode().splitlines() if line.strip()
    ]


def test_capture_files_in_s3_match_the_requests(platform: Any, smr: Any, endpoints: dict[str, Any]) -> None:
    s3, bucket = endpoints["s3"], endpoints["bucket"]
    answers = invoke_all(smr, "sc-same", inference_ids=True)

    def objects(variant: str) -> list[tuple[str, bytes]]:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"capture/sc-same/{variant}/").get("Contents", [])
        return [(o["Key"], s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()) for o in listing]

    # both test functions sent ROWS to sc-same with the same inference ids: two captures of each
    wait_until(lambda: len(_capture_lines(objects("primary"))) == 2 * len(ROWS), what="capture files")
    files = objects("primary")
    for key, _ in files:
        parts = key.split("/")  # capture/sc-same/primary/yyyy/mm/dd/hh/<MM-SS-mmm>-<uuid>.jsonl
        assert len(parts) == 8 and parts[-1].endswith(".jsonl")
        assert len(parts[3]) == 4 and all(len(p) == 2 for p in parts[4:7])
    records = _capture_lines(files)
    inputs = sorted(r["captureData"]["endpointInput"]["data"] for r in records)
    assert inputs == sorted(ROWS * 2)
    by_id = {r["eventMetadata"]["inferenceId"]: r for r in records}
    assert set(by_id) == {f"inf-sc-same-{i}" for i in range(len(ROWS))}
    for i, row in enumerate(ROWS):
        record = by_id[f"inf-sc-same-{i}"]
        assert record["eventVersion"] == "0"
        assert record["eventMetadata"]["eventId"] and record["eventMetadata"]["inferenceTime"].endswith("Z")
        assert record["captureData"]["endpointInput"] == {
            "observedContentType": "text/csv",
            "mode": "INPUT",
            "data": row,
            "encoding": "CSV",
        }
        output = record["captureData"]["endpointOutput"]
        assert output["mode"] == "OUTPUT" and output["encoding"] == "JSON"
        assert output["observedContentType"].startswith("application/json")
        assert json.loads(output["data"]) == json.loads(answers[i])
    # the shadow's answers are captured under its own variant name
    wait_until(lambda: len(_capture_lines(objects("shadow"))) == 2 * len(ROWS), what="shadow capture files")
    for record in _capture_lines(objects("shadow")):  # with the shadow answer's own content type
        output = record["captureData"]["endpointOutput"]
        assert output["observedContentType"].startswith("application/json") and output["encoding"] == "JSON"
        assert json.loads(output["data"])["predictions"]


def test_capture_to_file_input_only_is_base64_without_content_type_header(
    smr: Any, endpoints: dict[str, Any], platform: Any
) -> None:
    invoke_all(smr, "sc-failing")
    root: Path = endpoints["local"] / "sc-failing" / "primary"

    def records() -> list[dict[str, Any]]:
        return [
            json.loads(line) for f in sorted(root.rglob("*.jsonl")) for line in f.read_text().splitlines()
        ]

    wait_until(lambda: len(records()) == 2 * len(ROWS), what="file capture")
    for record in records():
        assert set(record["captureData"]) == {"endpointInput"}  # CaptureMode Input only
        payload = record["captureData"]["endpointInput"]
        assert payload["encoding"] == "BASE64"  # no CaptureContentTypeHeader: SageMaker base64-encodes
    decoded = sorted(base64.b64decode(r["captureData"]["endpointInput"]["data"]).decode() for r in records())
    assert decoded == sorted(ROWS * 2)
    assert sorted(p.name for p in endpoints["local"].iterdir()) == ["sc-failing"]


def test_describe_endpoint_follows_the_capture_config_in_service(
    sm: Any, models: dict[str, str], endpoints: dict[str, Any]
) -> None:
    """DescribeEndpoint's DataCaptureConfig is that of the config in service: it appears after an
    UpdateEndpoint to a capturing config and goes away after an update to one without capture."""
    assert "DataCaptureConfig" not in sm.describe_endpoint(EndpointName="sc-plain")
    sm.create_endpoint_config(
        EndpointConfigName="sc-plain-capture",
        ProductionVariants=[helpers.variant("primary", models["a"])],
        DataCaptureConfig={
            "InitialSamplingPercentage": 50,
            "DestinationS3Uri": f"s3://{endpoints['bucket']}/later",
            "CaptureOptions": [{"CaptureMode": "Input"}],
        },
    )
    for config, expected in (("sc-plain-capture", 50), ("sc-plain-cfg", None)):
        sm.update_endpoint(EndpointName="sc-plain", EndpointConfigName=config)
        sm.get_waiter("endpoint_in_service").wait(EndpointName="sc-plain", WaiterConfig=helpers.WAIT)
        described = sm.describe_endpoint(EndpointName="sc-plain")
        assert described["EndpointConfigName"] == config
        if expected is None:
            assert "DataCaptureConfig" not in described
        else:
            capture = described["DataCaptureConfig"]
            assert capture["CurrentSamplingPercentage"] == expected
            assert capture["CaptureStatus"] == "Started"
            assert capture["DestinationS3Uri"] == f"s3://{endpoints['bucket']}/later"
