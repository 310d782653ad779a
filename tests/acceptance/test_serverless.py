"""Serverless variants through the whole product: boto3 → `selfmaker up` → forked model servers.

Cold start then warm, MaxConcurrency + 1 concurrent requests (exactly the overflow throttled), scale to
zero when idle, ProvisionedConcurrency kept warm, and MemorySizeInMB enforced with a clear error.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from testkit import wait_until

ROOT = Path(__file__).resolve().parents[2]


import platform_helpers as helpers  # noqa: E402 - on sys.path via conftest.py

IDLE = 3.0


def code_model_tar(dest: Path, inference_py: str) -> str:
    """A model.tar.gz with only code/inference.py (model_fn/predict_fn decide what happens)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = inference_py.encode()
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return archive.as_uri()


SLOW_MODEL = """
import time

def model_fn(model_dir):
    return "slow"

def predict_fn(data, model):
    time.sleep(1.0)
    return [[1.0]]
"""

HUNGRY_MODEL = """
import numpy as np

def model_fn(model_dir):
    block = np.ones(200 * 1024 * 1024 // 8 * 8)   # 1.6 GB, beyond MemorySizeInMB=1024
    return block

def predict_fn(data, model):
    return [[float(model[0])]]
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = {"SELFMAKER_SERVERLESS_IDLE_TIMEOUT": str(IDLE)}
    with helpers.running(tmp_path_factory.mktemp("serverless-home"), env) as server:
        yield server


@pytest.fixture(scope="module")
def smr(platform: Any) -> Any:
    # no retries: a throttled request must surface as the caller's error
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=platform.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=60, max_pool_connections=16
        ),
    )


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return helpers.build_classifier_tar(tmp_path_factory.mktemp("model")).as_uri()


def deploy_serverless(sm: Any, name: str, model_data: str, **config: int) -> None:
    helpers.make_model(sm, f"{name}-model", model_data)
    serverless = {"MemorySizeInMB": 1024, "MaxConcurrency": 5, **config}
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-cfg",
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": f"{name}-model", "ServerlessConfig": serverless}
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=helpers.WAIT)


def outlive_an_idle_timeout(platform: Any, sm: Any, smr: Any, model_uri: str, control: str) -> None:
    """An observable event instead of a fixed sleep: an on-demand endpoint ``control``, deployed and
    invoked after the caller's last request, scales to zero. By then the caller's endpoint has been idle
    longer than the idle timeout plus the control's deployment and cold start: several reaper rounds."""
    deploy_serverless(sm, control, model_uri)
    invoke(smr, control)
    wait_until(lambda: instances(platform, control) == [], timeout=60, what=f"{control} to scale to zero")
    sm.delete_endpoint(EndpointName=control)


def instances(platform: Any, endpoint: str) -> list[dict[str, Any]]:
    """Model servers of ``endpoint`` as the platform records them (what `selfmaker status` prints)."""
    from selfmaker.state import StateStore

    store = StateStore(platform.home / "state.db")
    try:
        return [i for i in store.instances() if i["EndpointName"] == endpoint]
    finally:
        store.close()


def status_text(platform: Any) -> str:
    return subprocess.run(
        [sys.executable, "-m", "selfmaker", "status", "--home", str(platform.home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def metric(platform: Any, name: str, endpoint: str) -> float | None:
    text = requests.get(platform.url + "/metrics", timeout=10).text
    prefix = f'{name}{{endpoint="{endpoint}",variant="AllTraffic"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def invoke(smr: Any, endpoint: str, body: bytes = b"0.5,1.0,-0.3,2.0") -> dict[str, Any]:
    return smr.invoke_endpoint(
        EndpointName=endpoint, Body=body, ContentType="text/csv", Accept="application/json"
    )


def test_cold_start_then_warm_then_scale_to_zero(platform: Any, sm: Any, smr: Any, model_uri: str) -> None:
    deploy_serverless(sm, "sl-cold", model_uri)
    desc = sm.describe_endpoint(EndpointName="sl-cold")["ProductionVariants"][0]
    assert desc["CurrentServerlessConfig"] == {"MemorySizeInMB": 1024, "MaxConcurrency": 5}
    assert instances(platform, "sl-cold") == []  # nothing runs before the first request
    # InService means the template is up: the first call is a fork, not a wait behind its imports
    assert "serverless template ready" in platform.log()

    first = invoke(smr, "sl-cold")
    for _ in range(3):  # warm (well within the idle timeout): no new cold start
        invoke(smr, "sl-cold")
    assert first["InvokedProductionVariant"] == "AllTraffic"
    assert json.loads(first["Body"].read())["predictions"][0]["label"] in (0, 1)
    assert metric(platform, "selfmaker_serverless_cold_starts_total", "sl-cold") == 1
    assert metric(platform, "selfmaker_serverless_invocations_total", "sl-cold") == 4
    assert (metric(platform, "selfmaker_serverless_last_first_answer_seconds", "sl-cold") or 0) > 0
    assert "serverless cold start endpoint=sl-cold variant=AllTraffic" in platform.log()
    running = instances(platform, "sl-cold")
    assert len(running) == 1 and running[0]["Pid"]
    pid = running[0]["Pid"]

    wait_until(lambda: instances(platform, "sl-cold") == [], timeout=30, what="scale to zero")
    wait_until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        timeout=15,
        what="model server process gone",
    )
    assert metric(platform, "selfmaker_serverless_scaled_to_zero_total", "sl-cold") == 1
    wait_until(
        lambda: "serverless AllTraffic: instances=0" in status_text(platform).split("sl-cold", 1)[1],
        timeout=30,
        what="selfmaker status to show the variant at zero",
    )

    again = invoke(smr, "sl-cold")  # the next request cold-starts again and succeeds
    assert json.loads(again["Body"].read())["predictions"]
    assert metric(platform, "selfmaker_serverless_cold_starts_total", "sl-cold") == 2

    # through CloudWatch: five invocations, and each cold start a ModelSetupTime sample (sampled each second)
    cloudwatch = helpers.client("cloudwatch", platform.url)
    dims = [{"Name": "EndpointName", "Value": "sl-cold"}, {"Name": "VariantName", "Value": "AllTraffic"}]

    def stat(metric_name: str, statistic: str) -> float:
        now = time.time()
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker", MetricName=metric_name, Dimensions=dims, Period=3600,
            StartTime=now - 3600, EndTime=now + 60, Statistics=[statistic],
        )["Datapoints"]  # fmt: skip
        return float(sum(p[statistic] for p in points))

    assert stat("Invocations", "Sum") == 5
    wait_until(
        lambda: stat("ModelSetupTime", "SampleCount") == 2, timeout=10, what="two ModelSetupTime samples"
    )
    assert stat("ModelSetupTime", "Maximum") > 0


def test_max_concurrency_plus_one_throttles_exactly_the_overflow(
    platform: Any, sm: Any, smr: Any, tmp_path: Path
) -> None:
    deploy_serverless(sm, "sl-throttle", code_model_tar(tmp_path, SLOW_MODEL), MaxConcurrency=2)
    invoke(smr, "sl-throttle")  # warm, so every request below is in flight for ~1 s or more
    barrier = threading.Barrier(3)
    results: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait(timeout=30)
        try:
            invoke(smr, "sl-throttle")
            outcome = "ok"
        except ClientError as exc:
            outcome = f"{exc.response['Error']['Code']}/{exc.response['ResponseMetadata']['HTTPStatusCode']}"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["ThrottlingException/429", "ok", "ok"]
    assert metric(platform, "selfmaker_serverless_throttled_total", "sl-throttle") == 1
    invoke(smr, "sl-throttle")  # slots were given back


def test_provisioned_concurrency_stays_warm(platform: Any, sm: Any, smr: Any, model_uri: str) -> None:
    deploy_serverless(sm, "sl-warm", model_uri, MaxConcurrency=4, ProvisionedConcurrency=1)
    assert len(instances(platform, "sl-warm")) == 1  # started before InService
    invoke(smr, "sl-warm")
    outlive_an_idle_timeout(platform, sm, smr, model_uri, "sl-warm-control")
    assert len(instances(platform, "sl-warm")) == 1  # the provisioned instance survived it
    assert metric(platform, "selfmaker_serverless_cold_starts_total", "sl-warm") == 0


def test_memory_limit_fails_with_a_clear_error(platform: Any, sm: Any, smr: Any, tmp_path: Path) -> None:
    deploy_serverless(sm, "sl-hungry", code_model_tar(tmp_path, HUNGRY_MODEL))
    with pytest.raises(ClientError) as info:
        invoke(smr, "sl-hungry")
    error = info.value.response["Error"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["Code"] == "ModelError"
    assert "MemorySizeInMB=1024" in error["Message"]
    assert instances(platform, "sl-hungry") == []
    assert sm.describe_endpoint(EndpointName="sl-hungry")["EndpointStatus"] == "InService"


def test_bad_serverless_config_is_rejected(sm: Any, model_uri: str) -> None:
    helpers.make_model(sm, "sl-bad-model", model_uri)
    for config, needle in (
        ({"MemorySizeInMB": 1500, "MaxConcurrency": 1}, "memorySizeInMB"),
        (
            {"MemorySizeInMB": 2048, "MaxConcurrency": 2, "ProvisionedConcurrency": 3},
            "ProvisionedConcurrency",
        ),
        ({"MemorySizeInMB": 2048, "MaxConcurrency": 201}, "maxConcurrency"),
    ):
        with pytest.raises(ClientError) as info:
            sm.create_endpoint_config(
                EndpointConfigName="sl-bad",
                ProductionVariants=[
                    {"VariantName": "v", "ModelName": "sl-bad-model", "ServerlessConfig": config}
                ],
            )
        assert info.value.response["Error"]["Code"] == "ValidationException"
        assert needle in info.value.response["Error"]["Message"]


def test_serverless_update_config_changes_concurrency_in_place(
    platform: Any, sm: Any, smr: Any, model_uri: str
) -> None:
    deploy_serverless(sm, "sl-update", model_uri, MaxConcurrency=2)
    invoke(smr, "sl-update")
    with pytest.raises(ClientError) as info:  # ProvisionedConcurrency above MaxConcurrency
        sm.update_endpoint_weights_and_capacities(
            EndpointName="sl-update",
            DesiredWeightsAndCapacities=[
                {"VariantName": "AllTraffic", "ServerlessUpdateConfig": {"ProvisionedConcurrency": 3}}
            ],
        )
    assert info.value.response["Error"]["Code"] == "ValidationException"
    sm.update_endpoint_weights_and_capacities(
        EndpointName="sl-update",
        DesiredWeightsAndCapacities=[
            {
                "VariantName": "AllTraffic",
                "ServerlessUpdateConfig": {"MaxConcurrency": 7, "ProvisionedConcurrency": 1},
            }
        ],
    )
    desc = wait_until_in_service(sm, "sl-update")
    assert desc["ProductionVariants"][0]["CurrentServerlessConfig"] == {
        "MemorySizeInMB": 1024,
        "MaxConcurrency": 7,
        "ProvisionedConcurrency": 1,
    }
    wait_until(
        lambda: metric(platform, "selfmaker_serverless_instances", "sl-update") == 1,
        timeout=30,
        what="the provisioned instance",
    )
    outlive_an_idle_timeout(platform, sm, smr, model_uri, "sl-update-control")
    assert metric(platform, "selfmaker_serverless_instances", "sl-update") == 1  # the provisioned one stays
    assert metric(platform, "selfmaker_serverless_max_concurrency", "sl-update") == 7
    invoke(smr, "sl-update")
    with pytest.raises(ClientError) as info:  # a serverless variant has no instance count to set
        sm.update_endpoint_weights_and_capacities(
            EndpointName="sl-update",
            DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 2}],
        )
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "ServerlessUpdateConfig" in info.value.response["Error"]["Message"]

    # the update outlives a restart of the platform (the last test of this module: it restarts it)
    platform.stop()
    platform.start()
    desc = wait_until_in_service(platform.sagemaker(), "sl-update")
    assert desc["ProductionVariants"][0]["CurrentServerlessConfig"]["MaxConcurrency"] == 7
    wait_until(
        lambda: metric(platform, "selfmaker_serverless_max_concurrency", "sl-update") == 7,
        timeout=30,
        what="MaxConcurrency 7 after the restart",
    )


def wait_until_in_service(sm: Any, name: str) -> dict[str, Any]:
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=helpers.WAIT)
    return sm.describe_endpoint(EndpointName=name)
