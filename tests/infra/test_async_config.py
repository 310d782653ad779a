"""``selfmaker:endpoints[].async`` (AsyncInferenceConfig on SQS): values, and mistakes naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from infra import config as stack_config

E = "selfmaker:endpoints[0]"
VARIANT = {
    "name": "AllTraffic",
    "modelKey": "models/churn/v1/model.tar.gz",
    "scaling": {"minInstances": 0, "maxInstances": 3},
}
TOPIC = "arn:aws:sns:us-east-1:123456789012:churn-done"


def build(endpoint: dict[str, Any]) -> stack_config.EndpointConfig:
    cfg = stack_config.from_mapping(
        {"imageTag": "1.0", "endpoints": [endpoint]}, project="selfmaker", stack="t"
    )
    return cfg.endpoints[0]


def endpoint(**over: Any) -> dict[str, Any]:
    return {
        "name": "churn-async",
        "variants": [VARIANT],
        "async": {"maxConcurrentInvocationsPerInstance": 4},
        **over,
    }


def test_defaults_put_everything_under_the_endpoints_prefixes() -> None:
    got = build(endpoint())
    assert got.kind == "async"
    config = got.async_inference
    assert config is not None
    assert config.max_concurrent_invocations_per_instance == 4
    assert config.backlog_per_instance == 4  # the target: every slot busy, nothing waiting
    assert (config.output_prefix, config.failure_prefix, config.state_prefix, config.input_prefix) == (
        "async/churn-async/output/",
        "async/churn-async/failures/",
        "async/churn-async/state/",
        "async/churn-async/",
    )
    assert config.success_topic_arn is None and config.error_topic_arn is None
    assert got.variants[0].scaling is not None and got.variants[0].scaling.min_instances == 0


def test_given_values() -> None:
    config = build(
        endpoint(
            **{
                "async": {
                    "maxConcurrentInvocationsPerInstance": "2",
                    "outputPath": "/results/churn",
                    "failurePath": "errors/churn/",
                    "inputPath": "incoming",
                    "successTopicArn": TOPIC,
                    "includeInferenceResponseIn": ["SUCCESS_NOTIFICATION_TOPIC"],
                    "backlogPerInstance": 8,
                    "idleMinutes": 5,
                }
            }
        )
    ).async_inference
    assert config is not None
    assert (config.output_prefix, config.failure_prefix, config.input_prefix) == (
        "results/churn/",
        "errors/churn/",
        "incoming/",
    )
    assert config.success_topic_arn == TOPIC and config.error_topic_arn is None
    assert config.include_inference_response_in == ("SUCCESS_NOTIFICATION_TOPIC",)
    assert (
        config.max_concurrent_invocations_per_instance,
        config.backlog_per_instance,
        config.idle_minutes,
    ) == (2, 8, 5)


def test_a_real_time_endpoint_has_no_async_config() -> None:
    got = build({"name": "rt", "variants": [{"name": "a", "modelKey": "models/m/model.tar.gz"}]})
    assert got.kind == "realtime" and got.async_inference is None


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"async": {}}, f"{E}.async.maxConcurrentInvocationsPerInstance"),
        (
            {"async": {"maxConcurrentInvocationsPerInstance": 0}},
            f"{E}.async.maxConcurrentInvocationsPerInstance",
        ),
        ({"async": {"maxConcurrentInvocationsPerInstance": 4, "typo": 1}}, f"{E}.async.typo"),
        (
            {
                "async": {
                    "maxConcurrentInvocationsPerInstance": 4,
                    "successTopicArn": "arn:aws:sqs:us-east-1:123456789012:q",
                }
            },
            f"{E}.async.successTopicArn",
        ),
        (
            {"async": {"maxConcurrentInvocationsPerInstance": 4, "includeInferenceResponseIn": ["ALWAYS"]}},
            f"{E}.async.includeInferenceResponseIn[0]",
        ),
        (
            {"async": {"maxConcurrentInvocationsPerInstance": 4, "backlogPerInstance": 0}},
            f"{E}.async.backlogPerInstance",
        ),
        ({"async": {"maxConcurrentInvocationsPerInstance": 4, "idleMinutes": 0}}, f"{E}.async.idleMinutes"),
        (
            {"async": {"maxConcurrentInvocationsPerInstance": 4, "outputPath": "async/churn-async/state/x/"}},
            f"{E}.async.outputPath",
        ),
        (
            {"async": {"maxConcurrentInvocationsPerInstance": 4, "outputPath": "bad path"}},
            f"{E}.async.outputPath",
        ),
        ({"async": "yes"}, f"{E}.async"),
        # async without an instance variant, or with several
        (
            {"variants": [{"name": "s", "serverless": {"memorySizeInMB": 2048}}]},
            f"{E}.variants[0].serverless",
        ),
        ({"variants": [VARIANT, {**VARIANT, "name": "b"}]}, f"{E}.variants"),
        (
            {"variants": [{**VARIANT, "scaling": {"maxInstances": 2, "invocationsPerInstance": 10}}]},
            f"{E}.variants[0].scaling.invocationsPerInstance",
        ),
        (
            {"variants": [{**VARIANT, "scaling": {"minInstances": 3, "maxInstances": 2}}]},
            f"{E}.variants[0].scaling.maxInstances",
        ),
        ({"rollout": {"strategy": "canary"}}, f"{E}.rollout"),
        ({"variants": [{**VARIANT, "warmPool": True}]}, f"{E}.variants[0].warmPool"),
    ],
)
def test_mistakes_name_the_key(over: dict[str, Any], field: str) -> None:
    with pytest.raises(stack_config.ConfigError) as err:
        build(endpoint(**over))
    assert err.value.field == field, str(err.value)
