"""The platform's parts without a server: invocation headers, typed feature state, the registry's hooks,
/metrics over @metrics_source, and the manager's one build -> fail -> clean-up path (a real Platform on a
temporary home; no model server is started)."""

from __future__ import annotations

import asyncio
import logging
import types
from pathlib import Path
from typing import Any

import pytest

from selfmaker.api.metrics import Metrics, family, render_metrics
from selfmaker.api.registry import Registry, deployment_strategy, discover, metrics_source
from selfmaker.api.validation import check_invoke_request
from selfmaker.endpoints.invoke import outgoing_headers
from selfmaker.endpoints.runtime import FeatureState, InvocationRecord
from selfmaker.errors import ValidationError
from selfmaker.platform import Platform
from selfmaker.settings import PlatformSettings
from selfmaker.state import Record, now


def _record(**overrides: Any) -> InvocationRecord:
    fields: dict[str, Any] = {
        "endpoint_name": "ep",
        "body": b"1,2",
        "content_type": "text/csv",
        "accept": None,
        "custom_attributes": None,
        "target_variant": None,
        "inference_id": None,
    }
    fields.update(overrides)
    return InvocationRecord(**fields)


# ---- outgoing headers --------------------------------------------------------------------------------------


def test_outgoing_headers_carry_the_invocation_members_without_cr_lf() -> None:
    headers = outgoing_headers(
        _record(accept="application/json", custom_attributes="a=1\r\nX-Evil: 1", inference_id="id-1")
    )
    assert headers == {
        "Content-Type": "text/csv",
        "Accept": "application/json",
        "X-Amzn-SageMaker-Custom-Attributes": "a=1X-Evil: 1",
        "X-Amzn-SageMaker-Inference-Id": "id-1",
    }


@pytest.mark.parametrize("content_type", [None, "", "\r\n"])
def test_outgoing_headers_default_the_content_type(content_type: str | None) -> None:
    assert outgoing_headers(_record(content_type=content_type)) == {
        "Content-Type": "application/octet-stream"
    }


# ---- InvokeEndpointAsync's headers from botocore's model --------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        (
            {"X-Amzn-SageMaker-RequestTTLSeconds": "30"},
            "at 'requestTTLSeconds' failed to satisfy constraint: "
            "Member must have value greater than or equal to 60",
        ),
        (
            {"X-Amzn-SageMaker-RequestTTLSeconds": "soon"},
            "at 'requestTTLSeconds' failed to satisfy constraint: Member must be an integer",
        ),
        (
            {"X-Amzn-SageMaker-InvocationTimeoutSeconds": "3601"},
            "Member must have value less than or equal to 3600",
        ),
        (
            {"X-Amzn-SageMaker-Inference-Id": "x" * 65},
            "at 'inferenceId' failed to satisfy constraint: Member must have length less than or equal to 64",
        ),
        ({"X-Amzn-SageMaker-Filename": "a..b"}, "at 'filename' failed to satisfy constraint"),
        (
            {"X-Amzn-SageMaker-InputLocation": "ftp://bucket/key"},
            "at 'inputLocation' failed to satisfy constraint",
        ),
    ],
)
def test_async_headers_are_checked_against_the_service_model(headers: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValidationError, match="validation error") as caught:
        check_invoke_request("ep", headers, "InvokeEndpointAsync")
    assert fragment in caught.value.message


def test_async_request_may_leave_input_location_to_the_body() -> None:
    check_invoke_request(
        "ep",
        {"X-Amzn-SageMaker-Content-Type": "text/csv", "X-Amzn-SageMaker-RequestTTLSeconds": "600"},
        "InvokeEndpointAsync",
    )
    check_invoke_request(
        "ep", {"X-Amzn-SageMaker-InputLocation": "file:///tmp/in.csv"}, "InvokeEndpointAsync"
    )


def test_async_endpoint_name_is_checked() -> None:
    with pytest.raises(ValidationError, match="endpointName"):
        check_invoke_request("bad_name", {}, "InvokeEndpointAsync")


# ---- typed feature state -----------------------------------------------------------------------------------


class _Writer:
    pass


class _Policy:
    pass


def test_feature_state_keeps_one_object_per_type() -> None:
    state = FeatureState()
    assert state.get(_Writer) is None
    writer = state.setdefault(_Writer, _Writer)
    assert state.setdefault(_Writer, _Writer) is writer
    policy = _Policy()
    state.put(policy)
    assert state.get(_Policy) is policy and state.get(_Writer) is writer
    assert state.pop(_Writer) is writer
    assert state.get(_Writer) is None and state.pop(_Writer) is None
    assert state.values() == [policy]


# ---- the registry -----------------------------------------------------------------------------------------


def test_every_feature_registers_from_its_package() -> None:
    registry = discover()
    modules = {f.__module__ for f in registry.endpoint_hooks + registry.metrics_sources + registry.startup}
    assert {
        "selfmaker.features.async_inference",
        "selfmaker.features.capture",
        "selfmaker.features.guardrails",
        "selfmaker.features.serverless",
        "selfmaker.features.shadow",
    } <= modules
    assert [f.__module__ for f in registry.deployment_strategies] == ["selfmaker.features.guardrails"]
    assert [f.__module__ for f in registry.update_checks] == ["selfmaker.features.guardrails"]
    assert [f.__module__ for f in registry.variant_updates] == ["selfmaker.features.serverless"]
    assert "CreateTransformJob" in registry.operations and not registry.routes[0][1].startswith("/metrics")


def test_a_second_deployment_strategy_is_refused() -> None:
    registry = Registry()
    for name in ("first", "second"):
        module = types.ModuleType(f"fake_{name}")

        async def strategy(*args: Any) -> None:
            return None

        strategy.__module__ = module.__name__
        module.strategy = deployment_strategy(strategy)  # type: ignore[attr-defined]
        if name == "first":
            registry.add_module(module)
        else:
            with pytest.raises(RuntimeError, match="second deployment strategy"):
                registry.add_module(module)
    assert len(registry.deployment_strategies) == 1


# ---- a real Platform on a temporary home ------------------------------------------------------------------


@pytest.fixture()
def platform(tmp_path: Path) -> Platform:
    return Platform(PlatformSettings(home=tmp_path / "home"), discover())


def test_metrics_come_from_every_source_and_a_failing_one_is_left_out(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    text = render_metrics(platform.services)
    for name in (
        "selfmaker_serverless_instances",
        "selfmaker_shadow_requests_total",
        "selfmaker_deployment_rollbacks_total",
    ):
        assert f"# TYPE {name} " in text

    @metrics_source
    def broken(services: Any) -> Metrics:
        raise RuntimeError("boom")

    @metrics_source
    def extra(services: Any) -> Metrics:
        found = Metrics("Extra", {"ep": 1})
        family(found.lines, "selfmaker_extra_total", "counter", "An extra.", [({"endpoint": 'a"b'}, 3)])
        return found

    platform.services.registry.metrics_sources[:0] = [broken, extra]
    with caplog.at_level(logging.ERROR):
        text = render_metrics(platform.services)
    assert 'selfmaker_extra_total{endpoint="a\\"b"} 3' in text
    assert "metrics source broken failed" in caplog.text
    platform.services.store.close()


@pytest.mark.parametrize(
    ("models", "reason"),
    [
        (None, 'Could not find model "arn:aws:sagemaker:us-east-1:{account}:model/m".'),
        (
            {
                "m": {
                    "ModelName": "m",
                    "PrimaryContainer": {"ModelDataUrl": "file:///nonexistent/model.tar.gz"},
                }
            },
            "Failed to download model data for production variant v: model data "
            "file:///nonexistent/model.tar.gz does not exist",
        ),
        (
            {
                "m": {"ModelName": "m", "PrimaryContainer": "not a container"}
            },  # a damaged record: an unexpected error
            "internal error while deploying the endpoint",
        ),
    ],
)
def test_a_restore_that_cannot_build_fails_the_endpoint_and_leaves_no_directory(
    platform: Platform, models: dict[str, Any] | None, reason: str
) -> None:
    services = platform.services
    config = {
        "EndpointConfigName": "cfg",
        "ProductionVariants": [
            {"VariantName": "v", "ModelName": "m", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
        ],
    }
    doc: dict[str, Any] = {"EndpointName": "ep", "_Config": config}
    if models is not None:
        doc["_Models"] = models
    services.store.insert(
        Record(
            kind="endpoint",
            name="ep",
            arn=services.arn("endpoint", "ep"),
            status="InService",
            created=now(),
            modified=now(),
            doc=doc,
        )
    )

    async def restore() -> None:
        await services.endpoints.restore()
        deadline = asyncio.get_running_loop().time() + 30
        while services.endpoints.busy("ep") and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await services.endpoints.shutdown()

    asyncio.run(restore())
    record = services.store.get("endpoint", "ep")
    assert record is not None and record.status == "Failed"
    assert record.doc["FailureReason"] == reason.format(account=services.settings.account_id)
    deployments = services.settings.work_dir / "endpoints" / "ep"
    assert not deployments.exists() or list(deployments.iterdir()) == []
    services.store.close()
