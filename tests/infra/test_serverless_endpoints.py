"""Serverless endpoints on AWS Lambda: the stack config's `serverless` variants, the `ServerlessEndpoint`
component under mocks with policy checks, and the pure naming it uses."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pulumi.runtime import config as runtime_config

from infra import config as stack_config
from infra import endpoints, policies, program
from infra.components.endpoints.serverless import ServerlessEndpointArgs, ServerlessVariantArgs

if TYPE_CHECKING:
    from tests.infra.conftest import PulumiHarness, Registration

ACCOUNT = "123456789012"
SERVERLESS = {
    "name": "fraud",
    "variants": [
        {
            "name": "small",
            "modelKey": "models/fraud/v1/model.tar.gz",
            "initialVariantWeight": 3,
            "serverless": {"memorySizeInMB": 2048, "maxConcurrency": 20, "provisionedConcurrency": 2},
        },
        {
            "name": "large",
            "modelKey": "models/fraud/v2/model.tar.gz",
            "initialVariantWeight": 1,
            "serverless": {"memorySizeInMB": 6144, "maxConcurrency": 5, "multiValueHeaders": True},
            "environment": {"SAGEMAKER_PROGRAM": "inference.py"},
        },
    ],
}


def endpoint_config(*variants: dict[str, Any], **extra: Any) -> stack_config.StackConfig:
    return stack_config.from_mapping(
        {"imageTag": "1.4.0", "endpoints": [{"name": "fraud", "variants": list(variants), **extra}]},
        project="selfmaker",
        stack="dev",
    )


def variant(**serverless: Any) -> dict[str, Any]:
    return {
        "name": "v",
        "modelKey": "models/fraud/model.tar.gz",
        "serverless": {"memorySizeInMB": 2048, "maxConcurrency": 10, **serverless},
    }


# --- config -------------------------------------------------------------------------------------------


def test_serverless_variant_parsed_with_sagemaker_values() -> None:
    cfg = stack_config.from_mapping(
        {"imageTag": "1.4.0", "endpoints": [SERVERLESS]}, project="selfmaker", stack="dev"
    )
    (endpoint,) = cfg.endpoints
    assert endpoint.kind == "serverless"
    small, large = endpoint.variants
    assert small.kind == "serverless" and small.serverless is not None
    assert (
        small.serverless.memory_size_in_mb,
        small.serverless.max_concurrency,
        small.serverless.provisioned_concurrency,
    ) == (2048, 20, 2)
    assert large.serverless is not None and large.serverless.provisioned_concurrency is None
    assert large.serverless.multi_value_headers and large.serverless.image_tag == "1.4.0"
    assert cfg.gateway is not None  # a serverless endpoint is reached through the gateway too


@pytest.mark.parametrize(
    ("block", "key", "words"),
    [
        (variant(memorySizeInMB=1536), "variants[0].serverless.memorySizeInMB", "must be one of"),
        (variant(memorySizeInMB=8192), "variants[0].serverless.memorySizeInMB", "must be one of"),
        (variant(maxConcurrency=0), "variants[0].serverless.maxConcurrency", ">= 1"),
        (variant(maxConcurrency=201), "variants[0].serverless.maxConcurrency", "<= 200"),
        (
            variant(provisionedConcurrency=11),
            "variants[0].serverless.provisionedConcurrency",
            "maxConcurrency (10)",
        ),
        (variant(provisionedConcurrency=0), "variants[0].serverless.provisionedConcurrency", ">= 1"),
        (variant(timeoutSeconds=901), "variants[0].serverless.timeoutSeconds", "<= 900"),
        (variant(burst=1), "variants[0].serverless.burst", "unknown key"),
        (
            {"name": "v", "modelKey": "models/fraud/model.tar.gz", "serverless": {"maxConcurrency": 1}},
            "variants[0].serverless.memorySizeInMB",
            "required",
        ),
        ({**variant(), "initialInstanceCount": 1}, "variants[0].initialInstanceCount", "no instances"),
        ({**variant(), "accelerator": "gpu"}, "variants[0].accelerator", "no instances"),
        ({**variant(), "modelKey": "other/model.tar.gz"}, "variants[0].modelKey", "outside modelPrefix"),
        (
            {**variant(), "environment": {"SELFMAKER_MODEL_DATA": "x"}},
            "variants[0].environment.SELFMAKER_MODEL_DATA",
            "set by",
        ),
    ],
)
def test_config_mistakes_name_the_key(block: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(stack_config.ConfigError) as raised:
        endpoint_config(block)
    assert raised.value.field == f"selfmaker:endpoints[0].{key}"
    assert words in str(raised.value)


def test_serverless_and_instance_variants_do_not_mix() -> None:
    instance = {"name": "inst", "modelKey": "models/fraud/model.tar.gz", "initialInstanceCount": 1}
    with pytest.raises(stack_config.ConfigError) as raised:
        endpoint_config(instance, {**variant(), "name": "sv"})
    assert raised.value.field == "selfmaker:endpoints[0].variants[1].serverless"
    assert "all serverless or all instance-backed" in str(raised.value)
    with pytest.raises(stack_config.ConfigError) as raised:
        endpoint_config({**variant(), "name": "sv"}, instance)
    assert raised.value.field == "selfmaker:endpoints[0].variants[1].name"


def test_rollout_has_no_meaning_for_serverless_endpoints() -> None:
    with pytest.raises(stack_config.ConfigError) as raised:
        endpoint_config(variant(), rollout={"strategy": "linear"})
    assert raised.value.field == "selfmaker:endpoints[0].rollout"


def test_component_args_validate_eagerly() -> None:
    base: dict[str, Any] = {
        "variant_name": "v",
        "model_key": "models/m.tar.gz",
        "image_tag": "1",
        "memory_size_in_mb": 2048,
        "max_concurrency": 4,
    }

    def args(**over: Any) -> ServerlessEndpointArgs:
        return ServerlessEndpointArgs(
            gateway=None,
            variants=[ServerlessVariantArgs(**{**base, **over})],  # type: ignore[arg-type]
            priority_block=10,
            repository_url="r",
            models_bucket="b",
            models_bucket_arn="a",
            region="us-east-1",
            account_id=ACCOUNT,
            partition="aws",
            prefix="sm-dev",
            tags={},
        )

    assert args().alb_weights == [999]
    for over, field in [
        ({"memory_size_in_mb": 1000}, "memory_size_in_mb"),
        ({"max_concurrency": 300}, "max_concurrency"),
        ({"provisioned_concurrency": 5}, "provisioned_concurrency"),
        ({"model_key": "/x"}, "model_key"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
    ]:
        with pytest.raises(ValueError, match=f"ServerlessEndpointArgs.variants\\[v\\].{field}"):
            args(**over)


# --- pure naming ----------------------------------------------------------------------------------------

_NAME = st.from_regex(r"[a-zA-Z0-9](-?[a-zA-Z0-9]){0,62}", fullmatch=True)


@given(endpoint=_NAME, variant_name=_NAME)
def test_function_names_fit_lambda_and_keep_the_stack_prefix(endpoint: str, variant_name: str) -> None:
    name = endpoints.function_name("selfmaker-dev", endpoint, variant_name)
    assert len(name) <= endpoints.MAX_FUNCTION_NAME
    assert re.fullmatch(r"[A-Za-z0-9_-]+", name)
    assert name.startswith("selfmaker-dev-")
    assert name == endpoints.function_name("selfmaker-dev", endpoint, variant_name)
    if len(f"selfmaker-dev-{endpoint}-{variant_name}") <= 64:
        assert name == f"selfmaker-dev-{endpoint}-{variant_name}"


# --- the program under mocks ------------------------------------------------------------------------------


@pytest.fixture
def run(pulumi_harness: PulumiHarness, dev_stack_config: dict[str, str]) -> PulumiHarness:
    config = dict(dev_stack_config)
    config["selfmaker:endpoints"] = json.dumps([*json.loads(config["selfmaker:endpoints"]), SERVERLESS])
    runtime_config.set_all_config(config)
    pulumi_harness.run(program.main)
    return pulumi_harness


def by_name(regs: list[Registration], type_token: str) -> dict[str, Registration]:
    return {r.name: r for r in regs if r.type == type_token}


def test_each_variant_is_a_lambda_function_from_the_stack_image(
    run: PulumiHarness, dev_stack_config: dict[str, str]
) -> None:
    (component,) = [c for c in run.of_type("selfmaker:endpoints:ServerlessEndpoint") if c.name == "fraud"]
    functions = by_name(run.of_type("aws:lambda/function:Function"), "aws:lambda/function:Function")
    small, large = functions["fraud-small-function"].inputs, functions["fraud-large-function"].inputs
    repo = run.named("serving-images-repo").state["repositoryUrl"]
    assert small["packageType"] == "Image"
    assert small["imageUri"] == f"{repo}:{dev_stack_config['selfmaker:imageTag']}"
    assert small["imageConfig"] == {"commands": ["lambda"]}
    assert (small["memorySize"], small["reservedConcurrentExecutions"]) == (2048, 20)
    assert (large["memorySize"], large["reservedConcurrentExecutions"]) == (6144, 5)
    assert small["publish"] is True
    assert small["name"] == "selfmaker-dev-fraud-small"
    models = run.named("store-models").state["bucket"]
    env = small["environment"]["variables"]
    assert env["SELFMAKER_MODEL_DATA"] == f"s3://{models}/models/fraud/v1/model.tar.gz"
    assert (env["SELFMAKER_ENDPOINT_NAME"], env["SELFMAKER_VARIANT_NAME"]) == ("fraud", "small")
    assert large["environment"]["variables"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert (
        small["kmsKeyArn"] == run.named("store-key").state["arn"]
    )  # environment encrypted with the stack key
    logs = run.named("fraud-small-logs")
    assert small["loggingConfig"]["logGroup"] == logs.inputs["name"] == "/selfmaker-dev/fraud-small"
    assert logs.inputs["retentionInDays"] == 30
    assert all(f.parent == component.urn for n, f in functions.items() if n.startswith("fraud-"))


def test_provisioned_concurrency_is_on_the_published_alias(run: PulumiHarness) -> None:
    alias = run.named("fraud-small-alias").inputs
    assert alias["name"] == "live"
    assert alias["functionVersion"] == "1"  # the version the function published
    (provisioned,) = [
        p
        for p in run.of_type("aws:lambda/provisionedConcurrencyConfig:ProvisionedConcurrencyConfig")
        if p.name.startswith("fraud-")
    ]
    assert provisioned.name == "fraud-small-provisioned"
    assert provisioned.inputs["qualifier"] == "live"
    assert provisioned.inputs["provisionedConcurrentExecutions"] == 2
    assert provisioned.inputs["functionName"] == "selfmaker-dev-fraud-small"


def test_lambda_target_groups_and_listener_rules(run: PulumiHarness) -> None:
    groups = by_name(run.of_type("aws:lb/targetGroup:TargetGroup"), "aws:lb/targetGroup:TargetGroup")
    small, large = groups["fraud-small-tg"], groups["fraud-large-tg"]
    assert small.inputs["targetType"] == "lambda"
    assert small.inputs["healthCheck"]["enabled"] is False
    assert small.inputs.get("lambdaMultiValueHeadersEnabled") is False
    assert large.inputs["lambdaMultiValueHeadersEnabled"] is True
    attachment = run.named("fraud-small-target").inputs
    assert attachment["targetGroupArn"] == small.state["arn"]
    assert attachment["targetId"] == run.named("fraud-small-alias").state["arn"]
    permission = run.named("fraud-small-invoke").inputs
    assert permission["principal"] == "elasticloadbalancing.amazonaws.com"
    assert permission["action"] == "lambda:InvokeFunction"
    assert permission["sourceArn"] == small.state["arn"]
    assert (permission["qualifier"], permission["sourceAccount"]) == ("live", ACCOUNT)
    rules = {r.name: r.inputs for r in run.of_type("aws:lb/listenerRule:ListenerRule") if "fraud" in r.name}
    weighted = rules["gateway-fraud-weighted-rule"]
    assert weighted["conditions"][0]["pathPattern"]["values"] == ["/endpoints/fraud/invocations"]
    assert weighted["conditions"][1]["httpRequestMethod"]["values"] == ["POST"]
    forward = {g["arn"]: g["weight"] for g in weighted["actions"][0]["forward"]["targetGroups"]}
    assert forward == {small.state["arn"]: 999, large.state["arn"]: 333}
    header = rules["gateway-fraud-target-2-rule"]  # the second variant's place in the block
    assert header["conditions"][2]["httpHeader"] == {
        "httpHeaderName": "X-Amzn-SageMaker-Target-Variant",
        "values": ["large"],
    }
    assert [g["arn"] for g in header["actions"][0]["forward"]["targetGroups"]] == [large.state["arn"]]
    assert header["priority"] < weighted["priority"]
    priorities = [r.inputs["priority"] for r in run.of_type("aws:lb/listenerRule:ListenerRule")]
    assert len(priorities) == len(set(priorities))


def test_function_roles_are_least_privilege(run: PulumiHarness) -> None:
    models_arn = run.named("store-models").state["arn"]
    for name, key in (("small", "models/fraud/v1/model.tar.gz"), ("large", "models/fraud/v2/model.tar.gz")):
        doc = json.loads(run.named(f"fraud-{name}-policy").inputs["policy"])
        assert policies.wildcard_violations(doc) == []
        statements = {s["Sid"]: s for s in doc["Statement"]}
        assert statements["Model"]["Action"] == "s3:GetObject"
        assert statements["Model"]["Resource"] == f"{models_arn}/{key}"  # its own archive, nothing else
        log_arn = run.named(f"fraud-{name}-logs").state["arn"]
        assert statements["Logs"]["Resource"] == [log_arn, f"{log_arn}:*"]
        assert set(statements) == {"Model", "Logs", "Kms"}
        trust = json.loads(run.named(f"fraud-{name}-role").inputs["assumeRolePolicy"])["Statement"][0]
        assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
        assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_only_the_stacks_functions_may_pull_the_image(run: PulumiHarness) -> None:
    policy = run.named("serving-images-lambda-pull")
    assert policy.inputs["repository"] == run.named("serving-images-repo").inputs["name"]
    (statement,) = json.loads(policy.inputs["policy"])["Statement"]
    assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert sorted(statement["Action"]) == ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    assert (
        statement["Condition"]["StringLike"]["aws:sourceArn"]
        == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:selfmaker-dev-*"
    )
    assert statement["Condition"]["StringEquals"]["aws:sourceAccount"] == ACCOUNT


def test_new_resources_are_tagged_parented_and_exported(run: PulumiHarness) -> None:
    components = {r.urn: r for r in run.monitor.registrations if r.type.startswith("selfmaker:")}
    serverless_types = (
        "aws:lambda/",
        "aws:lb/targetGroup",
        "aws:lb/targetGroupAttachment",
        "aws:ecr/repositoryPolicy",
    )
    checked = 0
    for reg in run.monitor.registrations:
        if not reg.type.startswith(serverless_types) and not reg.name.startswith("fraud-"):
            continue
        assert reg.parent in components, f"{reg.type} {reg.name} has no component parent"
        assert reg.name.startswith(components[reg.parent].name + "-")
        if "tags" in reg.inputs:
            assert reg.inputs["tags"]["Stack"] == "dev" and reg.inputs["tags"]["Owner"] == "ml-platform"
        checked += 1
    assert checked >= 20
    (alarm,) = [
        r for r in run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm") if r.name == "fraud-large-throttles"
    ]
    assert alarm.inputs["metricName"] == "Throttles" and alarm.inputs["namespace"] == "AWS/Lambda"


def test_endpoint_without_provisioned_concurrency_has_none(
    pulumi_harness: PulumiHarness, dev_stack_config: dict[str, str]
) -> None:
    config = dict(dev_stack_config)
    config["selfmaker:endpoints"] = json.dumps([{"name": "tiny", "variants": [variant()]}])
    runtime_config.set_all_config(config)
    pulumi_harness.run(program.main)
    assert not pulumi_harness.of_type("aws:lambda/provisionedConcurrencyConfig:ProvisionedConcurrencyConfig")
    assert not pulumi_harness.of_type("selfmaker:endpoints:RealtimeEndpoint")
    assert pulumi_harness.named("tiny-v-alias").inputs["name"] == "live"


def test_dashboard_shows_each_variants_alias(run: PulumiHarness) -> None:
    dashboard = run.named("fraud-dashboard").inputs
    assert dashboard["dashboardName"] == "selfmaker-dev-fraud"
    body = json.loads(dashboard["dashboardBody"])
    metrics = [m for w in body["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]]
    names = {m[1] for m in metrics}
    assert {
        "Invocations",
        "Duration",
        "Errors",
        "Throttles",
        "ProvisionedConcurrencySpilloverInvocations",
    } <= names
    resources = {m[5] for m in metrics}
    assert resources == {"selfmaker-dev-fraud-small:live", "selfmaker-dev-fraud-large:live"}
