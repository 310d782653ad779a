"""Real-time endpoints through plain boto3 against a real `selfmaker up` with real model servers."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest
import requests
from botocore.exceptions import ClientError, WaiterError
from platform_helpers import ROW, WAIT, LoadLoop, deploy, invoke_variant, make_model, variant


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _instance_pids(sm: Any, platform_server: Any, endpoint: str) -> set[int]:
    from selfmaker.commands.status import collect

    data = collect(platform_server.home)
    return {i["Pid"] for i in data["instances"] if i["EndpointName"] == endpoint and i["Pid"]}


def test_endpoint_lifecycle_invoke_and_delete(
    sm: Any, smr: Any, platform_server: Any, onnx_model_tar: str
) -> None:
    model, endpoint = _name("m"), _name("Ep")
    make_model(sm, model, onnx_model_tar)
    deploy(sm, endpoint, [variant("AllTraffic", model, count=2)])
    desc = sm.describe_endpoint(EndpointName=endpoint)
    assert desc["EndpointStatus"] == "InService"
    assert desc["EndpointConfigName"] == f"{endpoint}-cfg"
    [summary] = desc["ProductionVariants"]
    assert summary["VariantName"] == "AllTraffic"
    assert (summary["CurrentInstanceCount"], summary["DesiredInstanceCount"]) == (2, 2)
    assert summary["CurrentWeight"] == 1.0
    assert desc["EndpointArn"] == f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{endpoint.lower()}"
    listed = sm.list_endpoints(NameContains=endpoint, StatusEquals="InService")["Endpoints"]
    assert [e["EndpointName"] for e in listed] == [endpoint]

    resp = smr.invoke_endpoint(
        EndpointName=endpoint,
        Body=ROW + b"\n-2,-2,0,0",
        ContentType="text/csv",
        Accept="application/json",
        CustomAttributes="trace=1",
        InferenceId="abc-1",
    )
    body = json.loads(resp["Body"].read())
    assert [p["label"] for p in body["predictions"]] == [1, 0]
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    assert resp["ContentType"].startswith("application/json")

    pids = _instance_pids(sm, platform_server, endpoint)
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    sm.delete_endpoint(EndpointName=endpoint)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(ClientError) as info:
        invoke_variant(smr, endpoint)
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_weights_80_20_and_target_variant(sm: Any, smr: Any, onnx_model_tar: str) -> None:
    model, endpoint = _name("m"), _name("split")
    make_model(sm, model, onnx_model_tar)
    deploy(
        sm,
        endpoint,
        [
            variant("Blue", model, weight=0.8),
            variant("Green", model, weight=0.2),
            variant("Dark", model, weight=0.0),
        ],
    )
    with ThreadPoolExecutor(8) as pool:
        counts = Counter(pool.map(lambda _: invoke_variant(smr, endpoint), range(2000)))
    assert set(counts) == {"Blue", "Green"}  # weight 0 gets no untargeted traffic
    assert abs(counts["Blue"] / 2000 - 0.8) <= 0.05
    assert abs(counts["Green"] / 2000 - 0.2) <= 0.05

    for target in ("Green", "Dark", "Blue"):
        assert {invoke_variant(smr, endpoint, TargetVariant=target) for _ in range(20)} == {target}
    with pytest.raises(ClientError) as info:
        invoke_variant(smr, endpoint, TargetVariant="Nope")
    assert info.value.response["Error"]["Code"] == "ValidationError"
    sm.delete_endpoint(EndpointName=endpoint)


def test_invoke_endpoint_with_response_stream(sm: Any, smr: Any, onnx_model_tar: str) -> None:
    """boto3's invoke_endpoint_with_response_stream: the answer arrives as PayloadPart events (64 KiB
    each) whose bytes are InvokeEndpoint's answer; routing, Accept and errors are InvokeEndpoint's."""
    model, endpoint = _name("m"), _name("stream")
    make_model(sm, model, onnx_model_tar)
    deploy(sm, endpoint, [variant("Blue", model, weight=1.0), variant("Green", model, weight=0.0)])
    rows = "".join(f"{i % 7 * 0.1:.1f},1.0,-0.5,{i % 3}\n" for i in range(3000)).encode()
    whole = smr.invoke_endpoint(
        EndpointName=endpoint,
        Body=rows,
        ContentType="text/csv",
        Accept="application/json",
        TargetVariant="Green",
    )
    expected = whole["Body"].read()
    assert len(expected) > 64 * 1024
    resp = smr.invoke_endpoint_with_response_stream(
        EndpointName=endpoint,
        Body=rows,
        ContentType="text/csv",
        Accept="application/json",
        TargetVariant="Green",
    )
    assert resp["InvokedProductionVariant"] == "Green"
    assert resp["ContentType"].startswith("application/json")
    events = list(resp["Body"])
    assert len(events) == -(-len(expected) // (64 * 1024)) and all(set(e) == {"PayloadPart"} for e in events)
    assert b"".join(e["PayloadPart"]["Bytes"] for e in events) == expected
    csv = smr.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, Body=b"1,2,3,4", ContentType="text/csv", Accept="text/csv"
    )
    assert csv["ContentType"].startswith("text/csv")
    assert b"".join(e["PayloadPart"]["Bytes"] for e in csv["Body"]).count(b"\n") == 1
    with pytest.raises(ClientError) as info:  # the model's 400 comes back as ModelError, before any stream
        smr.invoke_endpoint_with_response_stream(EndpointName=endpoint, Body=b"1,2", ContentType="text/csv")
    assert info.value.response["Error"]["Code"] == "ModelError"
    with pytest.raises(ClientError) as info:
        smr.invoke_endpoint_with_response_stream(
            EndpointName="no-such-endpoint", Body=b"1", ContentType="text/csv"
        )
    assert info.value.response["Error"]["Code"] == "ValidationError"
    sm.delete_endpoint(EndpointName=endpoint)


def test_runtime_errors(
    sm: Any, smr: Any, platform_server: Any, onnx_model_tar: str, broken_model_tar: str
) -> None:
    model, endpoint = _name("m"), _name("err")
    make_model(sm, model, onnx_model_tar)
    deploy(sm, endpoint, [variant("AllTraffic", model)])
    # the model server answers 400 for the wrong feature count -> ModelError 424 with the original answer
    with pytest.raises(ClientError) as info:
        smr.invoke_endpoint(EndpointName=endpoint, Body=b"1,2", ContentType="text/csv")
    err = info.value.response
    assert err["Error"]["Code"] == "ModelError"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert err["OriginalStatusCode"] == 400
    assert "expects 4 features" in err["OriginalMessage"]
    assert err["Error"]["Message"].startswith("Received client error (400) from primary with message")
    assert err["LogStreamArn"].endswith(f"/aws/sagemaker/Endpoints/{endpoint}")

    with pytest.raises(ClientError) as info:  # SageMaker's 6 MB payload limit
        smr.invoke_endpoint(EndpointName=endpoint, Body=b"0" * (6 * 1024 * 1024 + 1), ContentType="text/csv")
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "payload is too large" in info.value.response["Error"]["Message"]
    # chunked (no Content-Length), also past the HTTP layer's own 64 MB cap: 400, never a 500
    for megabytes in (7, 65):
        chunks = (b"0" * (1 << 20) for _ in range(megabytes))
        resp = requests.post(
            f"{platform_server.url}/endpoints/{endpoint}/invocations",
            data=chunks,
            headers={"Content-Type": "text/csv"},
            timeout=60,
        )
        assert resp.status_code == 400, (megabytes, resp.text)
        assert resp.headers["x-amzn-ErrorType"] == "ValidationError"
        assert "payload is too large" in resp.json()["message"]
    resp = requests.post(
        platform_server.url,
        data=(b" " * (1 << 20) for _ in range(65)),
        timeout=60,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.ListModels"},
    )
    assert resp.status_code == 400 and resp.json()["__type"] == "ValidationException"
    assert smr.invoke_endpoint(EndpointName=endpoint, Body=b"1,2,3,4", ContentType="text/csv")["Body"].read()
    # the runtime model's constraints on URI and header members, and members selfmaker cannot honour
    for kwargs, fragment in (
        ({"CustomAttributes": "a" * 1025}, "at 'customAttributes' failed to satisfy constraint"),
        ({"InferenceId": "i" * 65}, "at 'inferenceId' failed to satisfy constraint"),
        ({"TargetVariant": "bad name!"}, "at 'targetVariant' failed to satisfy constraint"),
        ({"EndpointName": "bad_name"}, "at 'endpointName' failed to satisfy constraint"),
        ({"TargetModel": "other.tar.gz"}, "TargetModel is not supported"),
        ({"TargetContainerHostname": "second"}, "is not configured for direct invocation"),
        ({"InferenceComponentName": "ic1"}, "InferenceComponentName is not supported"),
    ):
        with pytest.raises(ClientError) as info:
            smr.invoke_endpoint(
                **{"EndpointName": endpoint, "Body": b"1,2,3,4", "ContentType": "text/csv", **kwargs}
            )
        assert info.value.response["Error"]["Code"] == "ValidationError", kwargs
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert fragment in info.value.response["Error"]["Message"], info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        invoke_variant(smr, "no-such-endpoint")
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert (
        info.value.response["Error"]["Message"]
        == "Endpoint no-such-endpoint of account 123456789012 not found."
    )
    with pytest.raises(ClientError) as info:  # endpoint names are case-sensitive at invoke time
        invoke_variant(smr, endpoint.upper())
    assert info.value.response["Error"]["Code"] == "ValidationError"

    # a model that cannot load -> Failed with a reason; the waiter stops on Failed; invoking is refused
    broken, failed = _name("broken"), _name("failed")
    make_model(sm, broken, broken_model_tar)
    deploy(sm, failed, [variant("AllTraffic", broken)], wait=False)
    with pytest.raises(WaiterError):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=failed, WaiterConfig=WAIT)
    desc = sm.describe_endpoint(EndpointName=failed)
    assert desc["EndpointStatus"] == "Failed"
    assert "did not pass the ping health check" in desc["FailureReason"]
    with pytest.raises(ClientError) as info:
        invoke_variant(smr, failed)
    assert info.value.response["Error"]["Code"] == "ValidationError"
    with pytest.raises(ClientError) as info:
        sm.update_endpoint(EndpointName=failed, EndpointConfigName=f"{endpoint}-cfg")
    assert info.value.response["Error"]["Message"].startswith("Cannot update in-progress endpoint")
    sm.delete_endpoint(EndpointName=failed)
    sm.delete_endpoint(EndpointName=endpoint)
    for name in (failed, endpoint):
        sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=WAIT)


def test_blue_green_update_under_load(sm: Any, smr: Any, platform_server: Any, onnx_model_tar: str) -> None:
    model_a, model_b, endpoint = _name("ma"), _name("mb"), _name("bg")
    make_model(sm, model_a, onnx_model_tar)
    make_model(sm, model_b, onnx_model_tar)
    deploy(sm, endpoint, [variant("Old", model_a)])
    old_pids = _instance_pids(sm, platform_server, endpoint)
    sm.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-v2", ProductionVariants=[variant("New", model_b, count=2)]
    )
    statuses = set()
    with LoadLoop(lambda: invoke_variant(smr, endpoint), threads=4) as load:
        load.wait_for_calls(50)
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-v2")
        statuses.add(sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"])
        with pytest.raises(ClientError) as info:  # one update at a time
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-v2")
        assert info.value.response["Error"]["Message"].startswith("Cannot update in-progress endpoint")
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
        load.wait_for_calls(50)
    assert statuses == {"Updating"}
    assert load.errors == []
    assert {"Old", "New"} <= set(load.variants)
    first_new = load.variants.index("New")
    assert "Old" not in load.variants[first_new + 8 * load.threads :]  # only stragglers in flight at the swap
    desc = sm.describe_endpoint(EndpointName=endpoint)
    assert desc["EndpointConfigName"] == f"{endpoint}-v2"
    assert [v["VariantName"] for v in desc["ProductionVariants"]] == ["New"]
    assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    for pid in old_pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    sm.delete_endpoint(EndpointName=endpoint)


def test_weights_and_capacities_under_load(sm: Any, smr: Any, onnx_model_tar: str) -> None:
    model, endpoint = _name("m"), _name("wc")
    make_model(sm, model, onnx_model_tar)
    deploy(sm, endpoint, [variant("A", model, weight=1.0), variant("B", model, weight=1.0)])
    with LoadLoop(lambda: invoke_variant(smr, endpoint), threads=4) as load:
        load.wait_for_calls(40)
        sm.update_endpoint_weights_and_capacities(
            EndpointName=endpoint,
            DesiredWeightsAndCapacities=[
                {"VariantName": "A", "DesiredWeight": 0.0},
                {"VariantName": "B", "DesiredInstanceCount": 2},
            ],
        )
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
        mark = load.count()
        load.wait_for_calls(100)
        sm.update_endpoint_weights_and_capacities(
            EndpointName=endpoint,
            DesiredWeightsAndCapacities=[{"VariantName": "B", "DesiredInstanceCount": 1}],
        )
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
        load.wait_for_calls(40)
    assert load.errors == []
    assert set(load.variants[mark + 4 * load.threads :]) == {"B"}
    desc = {v["VariantName"]: v for v in sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]}
    assert desc["A"]["CurrentWeight"] == 0.0 and desc["B"]["CurrentWeight"] == 1.0
    assert desc["B"]["CurrentInstanceCount"] == 1
    assert invoke_variant(smr, endpoint, TargetVariant="A") == "A"

    for bad, code in (
        ([{"VariantName": "Z", "DesiredWeight": 1.0}], "ValidationException"),
        ([{"VariantName": "B", "DesiredWeight": 0.0}], "ValidationException"),
        ([{"VariantName": "B", "DesiredInstanceCount": 0}], "ValidationException"),
        ([{"VariantName": "B", "DesiredInstanceCount": 500}], "ResourceLimitExceeded"),
    ):
        with pytest.raises(ClientError) as info:
            sm.update_endpoint_weights_and_capacities(EndpointName=endpoint, DesiredWeightsAndCapacities=bad)
        assert info.value.response["Error"]["Code"] == code
    sm.delete_endpoint(EndpointName=endpoint)


def test_delete_under_load_fails_no_in_flight_request(sm: Any, smr: Any, onnx_model_tar: str) -> None:
    model, endpoint = _name("m"), _name("del")
    make_model(sm, model, onnx_model_tar)
    deploy(sm, endpoint, [variant("AllTraffic", model)])
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(invoke_variant, smr, endpoint) for _ in range(40)]
        futures[10].result()
        sm.delete_endpoint(EndpointName=endpoint)
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])
    # requests either completed on the draining server or were refused cleanly as "not found"
    assert set(outcomes) <= {"AllTraffic", "ValidationError"}
    assert outcomes[:11].count("AllTraffic") == 11
    sm.get_waiter("endpoint_deleted").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    assert os.path.basename(endpoint)


def test_failed_update_keeps_serving_the_old_config_and_retain_properties(
    sm: Any, smr: Any, tmp_path: Any, onnx_model_tar: str
) -> None:
    model, missing, endpoint = _name("m"), _name("missing"), _name("upd")
    make_model(sm, model, onnx_model_tar)
    make_model(sm, missing, (tmp_path / "nowhere" / "model.tar.gz").as_uri())
    deploy(sm, endpoint, [variant("A", model, weight=1.0), variant("B", model, weight=1.0)])
    sm.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-bad", ProductionVariants=[variant("A", missing)]
    )
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-bad")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    desc = sm.describe_endpoint(EndpointName=endpoint)
    assert desc["EndpointConfigName"] == f"{endpoint}-cfg"  # still the old configuration
    assert "Failed to download model data" in desc["FailureReason"]
    assert invoke_variant(smr, endpoint) in {"A", "B"}

    # weights changed live are kept by RetainAllVariantProperties, unless excluded
    sm.update_endpoint_weights_and_capacities(
        EndpointName=endpoint, DesiredWeightsAndCapacities=[{"VariantName": "A", "DesiredWeight": 0.0}]
    )
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    sm.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-v2",
        ProductionVariants=[variant("A", model, weight=5.0), variant("B", model, weight=1.0)],
    )
    sm.update_endpoint(
        EndpointName=endpoint, EndpointConfigName=f"{endpoint}-v2", RetainAllVariantProperties=True
    )
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    weights = {
        v["VariantName"]: v["CurrentWeight"]
        for v in sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]
    }
    assert weights == {"A": 0.0, "B": 1.0}
    assert "FailureReason" not in sm.describe_endpoint(EndpointName=endpoint)
    sm.update_endpoint(
        EndpointName=endpoint,
        EndpointConfigName=f"{endpoint}-v2",
        RetainAllVariantProperties=True,
        ExcludeRetainedVariantProperties=[{"VariantPropertyType": "DesiredWeight"}],
    )
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    weights = {
        v["VariantName"]: v["CurrentWeight"]
        for v in sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]
    }
    assert weights == {"A": 5.0, "B": 1.0}
    sm.delete_endpoint(EndpointName=endpoint)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (it may be reaped between any two checks)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_dead_model_server_is_routed_around_and_replaced(
    sm: Any, smr: Any, platform_server: Any, onnx_model_tar: str
) -> None:
    import signal
    import time

    model, endpoint = _name("m"), _name("heal")
    make_model(sm, model, onnx_model_tar)
    deploy(sm, endpoint, [variant("AllTraffic", model, count=2)])
    pids = _instance_pids(sm, platform_server, endpoint)
    victim = sorted(pids)[0]
    group = [victim, *(c.pid for c in psutil.Process(victim).children(recursive=True))]
    os.killpg(victim, signal.SIGKILL)  # a model server started (in its own group) by our platform dies
    deadline = time.monotonic() + 30
    while any(_running(p) for p in group):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # requests keep working: connections to the dead server fail before sending, so they go to the other one
    assert {invoke_variant(smr, endpoint) for _ in range(20)} == {"AllTraffic"}
    deadline = time.monotonic() + 60
    while True:
        current = _instance_pids(sm, platform_server, endpoint)
        if len(current) == 2 and victim not in current and all(psutil.pid_exists(p) for p in current):
            break
        assert time.monotonic() < deadline, f"instance not replaced: {current}"
        time.sleep(0.2)
    assert {invoke_variant(smr, endpoint) for _ in range(20)} == {"AllTraffic"}
    sm.delete_endpoint(EndpointName=endpoint)
