"""Deployment guardrails through the whole product: UpdateEndpoint with a blue/green canary policy and
auto-rollback alarms, under continuous boto3 traffic."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]


import platform_helpers as helpers  # noqa: E402 - on sys.path via conftest.py

ROW = b"0.3,-1.2,0.8,0.1"
BROKEN_MODEL = """
def model_fn(model_dir):
    return "broken"

def predict_fn(data, model):
    raise RuntimeError("the new model is broken")
"""
#: SELFMAKER_ALARMS (setting) and <home>/alarms.json (file) both define alarms
SETTING_ALARMS = {
    "Alarms": [
        {
            "AlarmName": "new-fleet-5xx",
            "MetricName": "Invocation5XXErrors",
            "Statistic": "Average",
            "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": 0.1,
            "Period": 60,
        }
    ]
}
FILE_ALARMS = {
    "Alarms": [
        {
            "AlarmName": "new-fleet-p99",
            "MetricName": "ModelLatency",
            "ExtendedStatistic": "p99",
            "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": 30_000_000,
            "Period": 60,
        }
    ]
}


def canary(wait: int, *alarms: str, percent: int = 50) -> dict[str, Any]:
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "WaitIntervalInSeconds": wait,
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": percent},
            },
            "TerminationWaitInSeconds": 0,
            "MaximumExecutionTimeoutInSeconds": 600,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in alarms]},
    }


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("guardrails-home")
    (home / "alarms.json").write_text(json.dumps(FILE_ALARMS))
    env = {
        "SELFMAKER_ALARMS": json.dumps(SETTING_ALARMS),
        "SELFMAKER_SERVERLESS_FORK_ALL_PROCESS_VARIANTS": "true",
    }
    with helpers.running(home, env) as server:
        yield server


@pytest.fixture(scope="module")
def models(sm: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("models")
    helpers.make_model(sm, "gr-a", helpers.build_classifier_tar(root / "a", seed=0).as_uri())
    helpers.make_model(sm, "gr-b", helpers.build_classifier_tar(root / "b", seed=7).as_uri())
    broken = root / "broken" / "model.tar.gz"
    broken.parent.mkdir(parents=True)
    with tarfile.open(broken, "w:gz") as tar:
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(BROKEN_MODEL.encode())
        tar.addfile(info, io.BytesIO(BROKEN_MODEL.encode()))
    helpers.make_model(sm, "gr-broken", broken.as_uri())
    for name, model in (("gr-cfg-a", "gr-a"), ("gr-cfg-b", "gr-b"), ("gr-cfg-broken", "gr-broken")):
        sm.create_endpoint_config(
            EndpointConfigName=name, ProductionVariants=[helpers.variant("AllTraffic", model)]
        )


class Traffic:
    """Invokes an endpoint back to back from a thread (bounded in count and time), keeping every outcome."""

    def __init__(self, smr: Any, endpoint: str, max_requests: int = 3000, max_seconds: float = 120.0) -> None:
        self.smr, self.endpoint = smr, endpoint
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.answers: list[bytes] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while (
            not self._stop.is_set() and time.monotonic() < deadline and len(self.answers) < self.max_requests
        ):
            try:
                resp = self.smr.invoke_endpoint(
                    EndpointName=self.endpoint, Body=ROW, ContentType="text/csv", Accept="application/json"
                )
                self.answers.append(resp["Body"].read())
            except ClientError as exc:
                self.failures.append(
                    f"{exc.response['Error']['Code']}: {exc.response['Error']['Message'][:200]}"
                )
            time.sleep(0.01)

    def wait_for_more(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` more requests than now have ended (answered or failed): traffic seen
        after an event, instead of a fixed sleep."""
        target = len(self.answers) + len(self.failures) + count
        deadline = time.monotonic() + timeout
        while len(self.answers) + len(self.failures) < target:
            assert self._thread.is_alive(), "the traffic loop ended (its count or time bound) too early"
            assert time.monotonic() < deadline, f"fewer than {count} requests in {timeout}s"
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def wait_in_service(
    sm: Any, name: str, seen: set[str] | None = None, timeout: float = 120.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        desc = sm.describe_endpoint(EndpointName=name)
        if seen is not None:
            seen.add(desc["EndpointStatus"])
            for variant in (desc.get("PendingDeploymentSummary") or {}).get("ProductionVariants", []):
                for status in variant.get("VariantStatus", []):
                    seen.add(f"variant:{status['Status']}")
        if desc["EndpointStatus"] == "InService":
            return desc
        time.sleep(0.1)
    raise AssertionError(f"{name} not InService after {timeout}s")


def answer_of(smr: Any, endpoint: str) -> bytes:
    return smr.invoke_endpoint(
        EndpointName=endpoint, Body=ROW, ContentType="text/csv", Accept="application/json"
    )["Body"].read()


def metric(platform: Any, name: str, endpoint: str) -> float | None:
    for line in requests.get(platform.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'{name}{{endpoint="{endpoint}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_canary_with_a_healthy_new_fleet_completes(platform: Any, sm: Any, smr: Any, models: None) -> None:
    sm.create_endpoint(EndpointName="gr-ok", EndpointConfigName="gr-cfg-a")
    wait_in_service(sm, "gr-ok")
    old_answer = answer_of(smr, "gr-ok")
    seen: set[str] = set()
    with Traffic(smr, "gr-ok") as traffic:
        sm.update_endpoint(
            EndpointName="gr-ok",
            EndpointConfigName="gr-cfg-b",
            DeploymentConfig=canary(2, "new-fleet-5xx", "new-fleet-p99"),
        )
        desc = wait_in_service(sm, "gr-ok", seen)
        traffic.wait_for_more(20)  # a little traffic on the new fleet alone
    assert traffic.failures == []
    assert desc["EndpointConfigName"] == "gr-cfg-b" and "FailureReason" not in desc
    assert (
        desc["LastDeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"]
        == "CANARY"
    )
    assert "PendingDeploymentSummary" not in desc
    assert {"Updating", "variant:Baking"} <= seen
    new_answer = answer_of(smr, "gr-ok")
    assert new_answer != old_answer  # model b answers now
    assert set(traffic.answers) <= {old_answer, new_answer} and new_answer in traffic.answers
    assert metric(platform, "selfmaker_deployment_rollbacks_total", "gr-ok") == 0


def test_canary_with_a_broken_new_fleet_rolls_back_without_failed_requests(
    platform: Any, sm: Any, smr: Any, models: None
) -> None:
    sm.create_endpoint(EndpointName="gr-bad", EndpointConfigName="gr-cfg-a")
    wait_in_service(sm, "gr-bad")
    old_answer = answer_of(smr, "gr-bad")
    with Traffic(smr, "gr-bad") as traffic:
        sm.update_endpoint(
            EndpointName="gr-bad",
            EndpointConfigName="gr-cfg-broken",
            DeploymentConfig=canary(30, "new-fleet-5xx"),
        )
        desc = wait_in_service(sm, "gr-bad")
        traffic.wait_for_more(20)  # and on the old fleet after the rollback
    assert traffic.failures == []  # the canary's 500s were answered by the old fleet
    assert len(traffic.answers) > 0 and set(traffic.answers) == {old_answer}
    assert desc["EndpointConfigName"] == "gr-cfg-a"
    assert "new-fleet-5xx" in desc["FailureReason"] and "rolled back" in desc["FailureReason"]
    assert answer_of(smr, "gr-bad") == old_answer
    assert metric(platform, "selfmaker_deployment_rollbacks_total", "gr-bad") == 1
    assert (metric(platform, "selfmaker_deployment_fallbacks_total", "gr-bad") or 0) >= 1


def test_bad_deployment_configs_are_rejected(sm: Any, models: None) -> None:
    sm.create_endpoint(EndpointName="gr-val", EndpointConfigName="gr-cfg-a")
    wait_in_service(sm, "gr-val")
    for config, needle in (
        (canary(1, "no-such-alarm"), "no-such-alarm"),
        (canary(1, "new-fleet-5xx", percent=60), "CanarySize"),
        (
            {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "LINEAR",
                        "WaitIntervalInSeconds": 1,
                        "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 5},
                    }
                }
            },
            "LinearStepSize",
        ),
    ):
        with pytest.raises(ClientError) as info:
            sm.update_endpoint(EndpointName="gr-val", EndpointConfigName="gr-cfg-b", DeploymentConfig=config)
        assert info.value.response["Error"]["Code"] == "ValidationException"
        assert needle in info.value.response["Error"]["Message"]
    assert sm.describe_endpoint(EndpointName="gr-val")["EndpointStatus"] == "InService"
