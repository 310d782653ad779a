"""`AsyncEndpoint` under Pulumi mocks: every resource's inputs, encryption and least-privilege policies."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest

from infra import async_scaling, policies
from infra.components.endpoints.async_endpoint import AsyncEndpoint, AsyncEndpointArgs, front_sources
from infra.components.endpoints.gateway import Gateway, GatewayArgs

if TYPE_CHECKING:
    from tests.infra.conftest import PulumiHarness, Registration

TAGS = {"Project": "selfmaker", "Stack": "t", "ManagedBy": "pulumi"}
REPO = "123456789012.dkr.ecr.us-east-1.amazonaws.com/selfmaker-t/serving"
REPO_ARN = "arn:aws:ecr:us-east-1:123456789012:repository/selfmaker-t/serving"
GIVEN_TOPIC = "arn:aws:sns:us-east-1:123456789012:selfmaker-t-done"


def endpoint_args(**over: Any) -> AsyncEndpointArgs:
    base: dict[str, Any] = {
        "endpoint_name": "churn-async",
        "models_bucket": "models-b",
        "models_bucket_arn": "arn:aws:s3:::models-b",
        "model_key": "models/churn/v1/model.tar.gz",
        "outputs_bucket": "outputs-b",
        "outputs_bucket_arn": "arn:aws:s3:::outputs-b",
        "output_prefix": "async/churn-async/output/",
        "failure_prefix": "async/churn-async/failures/",
        "state_prefix": "async/churn-async/state/",
        "input_bucket": "data-b",
        "input_bucket_arn": "arn:aws:s3:::data-b",
        "input_prefix": "async/churn-async/",
        "max_concurrent_invocations_per_instance": 4,
        "accelerator": "cpu",
        "instance_types": ["m5.large"],
        "vpc_id": "vpc-1",
        "subnet_ids": ["subnet-a", "subnet-b"],
        "repository_url": REPO,
        "repository_arns": [REPO_ARN],
        "image_tag": "1.0",
        "region": "us-east-1",
        "account_id": "123456789012",
        "partition": "aws",
        "prefix": "selfmaker-t",
        "tags": TAGS,
        "ami_parameter": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
        "scaling": async_scaling.BacklogScaling(
            min_instances=0, max_instances=4, target_backlog_per_instance=4
        ),
        "gateway": None,
        "rule_priority": None,
        "kms_key_arn": "arn:aws:kms:us-east-1:123456789012:key/k",
    }
    return AsyncEndpointArgs(**{**base, **over})


def _policy(reg: Registration) -> dict[str, Any]:
    doc = reg.inputs["policy"]
    return json.loads(doc) if isinstance(doc, str) else doc


def _actions(doc: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for stmt in doc["Statement"]:
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        out |= set(actions)
    return out


def _resources_of(doc: dict[str, Any], prefix: str) -> set[str]:
    out: set[str] = set()
    for stmt in doc["Statement"]:
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        if any(a.startswith(prefix) for a in actions):
            resources = stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
            out |= set(resources)
    return out


def with_gateway() -> AsyncEndpoint:
    gateway = Gateway(
        "gw",
        GatewayArgs(
            vpc_id="vpc-1", subnet_ids=["subnet-a", "subnet-b"], tags=TAGS, allowed_cidrs=["10.0.0.0/16"]
        ),
    )
    return AsyncEndpoint("churn-async", endpoint_args(gateway=gateway, rule_priority=1209))


@pytest.fixture
def deployed(pulumi_harness: PulumiHarness) -> PulumiHarness:
    pulumi_harness.run(with_gateway)
    return pulumi_harness


def test_queue_is_encrypted_with_a_dead_letter_queue_and_a_visibility_above_the_longest_invocation(
    deployed: PulumiHarness,
) -> None:
    queue = deployed.named("churn-async-queue")
    dlq = deployed.named("churn-async-dlq")
    for q in (queue, dlq):
        assert q.inputs["sqsManagedSseEnabled"] is True
        assert q.inputs["tags"]["Endpoint"] == "churn-async" and q.inputs["tags"]["Project"] == "selfmaker"
    assert queue.inputs["visibilityTimeoutSeconds"] > async_scaling.MAX_INVOCATION_TIMEOUT
    redrive = json.loads(queue.inputs["redrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq.state["arn"]
    assert redrive["maxReceiveCount"] > async_scaling.WORKER_MAX_ATTEMPTS
    alarm = deployed.named("churn-async-dlq-alarm").inputs
    assert alarm["dimensions"] == {"QueueName": dlq.state["name"]} and alarm["threshold"] == 0
    assert alarm["comparisonOperator"] == "GreaterThanThreshold"
    allow = json.loads(deployed.named("churn-async-dlq-allow").inputs["redriveAllowPolicy"])
    assert allow == {"redrivePermission": "byQueue", "sourceQueueArns": [queue.state["arn"]]}


def test_topics_are_created_encrypted_unless_given(deployed: PulumiHarness) -> None:
    topics = deployed.of_type("aws:sns/topic:Topic")
    assert sorted(t.name for t in topics) == ["churn-async-error-topic", "churn-async-success-topic"]
    assert all(t.inputs["kmsMasterKeyId"] == "alias/aws/sns" for t in topics)


def test_a_given_topic_is_used_and_not_created(pulumi_harness: PulumiHarness) -> None:
    pulumi_harness.run(
        lambda: AsyncEndpoint("ep", endpoint_args(endpoint_name="ep", success_topic_arn=GIVEN_TOPIC))
    )
    assert [t.name for t in pulumi_harness.of_type("aws:sns/topic:Topic")] == ["ep-error-topic"]
    front = pulumi_harness.named("ep-front").inputs["environment"]["variables"]
    assert front["SELFMAKER_SUCCESS_TOPIC"] == GIVEN_TOPIC
    worker = _policy(pulumi_harness.named("ep-worker-policy"))
    assert _resources_of(worker, "sns:") == {GIVEN_TOPIC, pulumi_harness.named("ep-error-topic").state["arn"]}


def test_front_lambda_is_a_zip_of_the_shared_modules_routed_by_the_gateway(deployed: PulumiHarness) -> None:
    fn = deployed.named("churn-async-front")
    assert (
        fn.inputs["runtime"].startswith("python3") and fn.inputs["handler"] == "serving.asyncq.front.handler"
    )
    assert fn.inputs["role"] == deployed.named("churn-async-front-role").state["arn"]
    env = fn.inputs["environment"]["variables"]
    assert env["SELFMAKER_ENDPOINT_NAME"] == "churn-async"
    assert env["SELFMAKER_QUEUE_URL"] == deployed.named("churn-async-queue").state["url"]
    assert env["SELFMAKER_OUTPUT_PATH"] == "s3://outputs-b/async/churn-async/output/"
    assert env["SELFMAKER_FAILURE_PATH"] == "s3://outputs-b/async/churn-async/failures/"
    assert env["SELFMAKER_INPUT_LOCATIONS"] == "s3://data-b/async/churn-async/"
    assert env["SELFMAKER_SUCCESS_TOPIC"] == deployed.named("churn-async-success-topic").state["arn"]
    assert fn.inputs["loggingConfig"]["logGroup"] == "/selfmaker-t/async/churn-async/front"
    tg = deployed.named("churn-async-front-tg")
    assert tg.inputs["targetType"] == "lambda"
    perm = deployed.named("churn-async-front-invoke").inputs
    assert perm["principal"] == "elasticloadbalancing.amazonaws.com" and perm["sourceArn"] == tg.state["arn"]
    assert deployed.named("churn-async-front-target").inputs["targetId"] == fn.state["arn"]
    rule = deployed.named("gw-churn-async-async-rule").inputs
    assert rule["priority"] == 1209
    assert rule["listenerArn"] == deployed.named("gw-listener").state["arn"]
    assert {"pathPattern": {"values": ["/endpoints/churn-async/async-invocations"]}} in rule["conditions"]
    assert {"httpRequestMethod": {"values": ["POST"]}} in rule["conditions"]
    assert rule["actions"][0]["forward"]["targetGroups"] == [{"arn": tg.state["arn"], "weight": 1}]


def test_front_may_only_send_to_its_queue_and_read_its_inputs(deployed: PulumiHarness) -> None:
    doc = _policy(deployed.named("churn-async-front-policy"))
    assert not policies.wildcard_violations(doc)
    queue_arn = deployed.named("churn-async-queue").state["arn"]
    sqs = [a for a in _actions(doc) if a.startswith("sqs:")]
    assert sqs == ["sqs:SendMessage"] and _resources_of(doc, "sqs:") == {queue_arn}
    assert not any(
        a.startswith(("sns:", "ecr:", "autoscaling:")) or a == "s3:PutObject" for a in _actions(doc)
    )
    assert _resources_of(doc, "s3:GetObject") == {"arn:aws:s3:::data-b/async/churn-async/*"}
    trust = json.loads(deployed.named("churn-async-front-role").inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert trust["Statement"][0]["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}


def test_workers_only_consume_their_queue_read_inputs_write_results_publish_their_topics(
    deployed: PulumiHarness,
) -> None:
    doc = _policy(deployed.named("churn-async-worker-policy"))
    assert not policies.wildcard_violations(doc)
    queue_arn = deployed.named("churn-async-queue").state["arn"]
    assert _resources_of(doc, "sqs:") == {queue_arn}
    assert "sqs:SendMessage" not in _actions(doc)
    assert {a for a in _actions(doc) if a.startswith("sqs:")} == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    }
    topics = {t.state["arn"] for t in deployed.of_type("aws:sns/topic:Topic")}
    assert _resources_of(doc, "sns:") == topics and {a for a in _actions(doc) if a.startswith("sns:")} == {
        "sns:Publish"
    }
    writes = _resources_of(doc, "s3:PutObject")
    assert writes == {
        f"arn:aws:s3:::outputs-b/async/churn-async/{p}/*" for p in ("output", "failures", "state")
    }
    reads = _resources_of(doc, "s3:GetObject")
    assert "arn:aws:s3:::data-b/async/churn-async/*" in reads
    assert "arn:aws:s3:::models-b/models/churn/v1/model.tar.gz" in reads
    assert not any(r.startswith("arn:aws:s3:::models-b/") and r.endswith("*") for r in reads)
    assert "s3:DeleteObject" not in _actions(doc)
    profile = deployed.named("churn-async-worker-profile").inputs
    assert profile["role"] == deployed.named("churn-async-worker-role").state["name"]


def test_worker_group_runs_the_model_server_and_the_async_worker(deployed: PulumiHarness) -> None:
    lt = deployed.named("churn-async-workers-lt").inputs
    assert lt["metadataOptions"]["httpTokens"] == "required"
    assert lt["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"
    script = base64.b64decode(lt["userData"]).decode()
    queue_url = deployed.named("churn-async-queue").state["url"]
    assert f"python -m serving.asyncq --queue sqs:{queue_url} " in script
    assert "--state s3://outputs-b/async/churn-async/state/" in script
    assert "--name churn-async --model-url http://127.0.0.1:8080 --concurrency 4" in script
    assert f"--visibility-timeout {async_scaling.visibility_timeout()}" in script
    assert "-p 127.0.0.1:8080:8080" in script  # the model server is not reachable from the network
    assert "SAGEMAKER_MODEL_SERVER_TIMEOUT=3600" in script
    assert lt["iamInstanceProfile"]["arn"] == deployed.named("churn-async-worker-profile").state["arn"]
    worker_sg = deployed.named("churn-async-workers-sg").id
    ingress = deployed.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert not [r for r in ingress if r.inputs["securityGroupId"] == worker_sg]  # workers take no traffic
    asg = deployed.named("churn-async-workers-asg").inputs
    assert (asg["minSize"], asg["maxSize"], asg["desiredCapacity"]) == (0, 4, 0)


def test_scaling_tracks_backlog_per_instance_wakes_from_zero_and_idles_to_zero(
    deployed: PulumiHarness,
) -> None:
    group = deployed.named("churn-async-workers-asg").state["name"]
    queue = deployed.named("churn-async-queue").state["name"]
    tracking = deployed.named("churn-async-backlog-tracking").inputs
    assert tracking["policyType"] == "TargetTrackingScaling" and tracking["autoscalingGroupName"] == group
    config = tracking["targetTrackingConfiguration"]
    assert config["targetValue"] == 4
    metrics = config["customizedMetricSpecification"]["metrics"]
    (expr,) = [m for m in metrics if m.get("returnData")]
    assert expr["expression"] == "(visible + inflight) / instances"
    dims = {
        m["id"]: m["metricStat"]["metric"]["dimensions"][0]["value"] for m in metrics if "metricStat" in m
    }
    assert dims == {"visible": queue, "inflight": queue, "instances": group}

    wake = deployed.named("churn-async-wake-alarm").inputs
    assert wake["alarmActions"] == [deployed.named("churn-async-wake").state["arn"]]
    assert wake["comparisonOperator"] == "GreaterThanOrEqualToThreshold" and wake["threshold"] == 1
    (stranded,) = [q for q in wake["metricQueries"] if q.get("returnData")]
    assert stranded["expression"] == "IF(visible > 0 AND desired == 0, 1, 0)"
    wake_policy = deployed.named("churn-async-wake").inputs
    assert (
        wake_policy["adjustmentType"] == "ExactCapacity"
        and wake_policy["stepAdjustments"][0]["scalingAdjustment"] == 1
    )

    idle = deployed.named("churn-async-idle-alarm").inputs
    assert idle["comparisonOperator"] == "LessThanOrEqualToThreshold" and idle["threshold"] == 0
    assert idle["evaluationPeriods"] == 15 and idle["treatMissingData"] == "breaching"
    idle_policy = deployed.named("churn-async-idle").inputs
    assert (
        idle_policy["adjustmentType"] == "ExactCapacity"
        and idle_policy["stepAdjustments"][0]["scalingAdjustment"] == 0
    )


def test_every_child_is_parented_and_tagged(deployed: PulumiHarness) -> None:
    component = deployed.named("churn-async")
    assert component.type == "selfmaker:endpoints:AsyncEndpoint"
    urns = {r.urn for r in deployed.monitor.registrations}
    for reg in deployed.monitor.registrations:
        if reg is component or reg.name == "gw":
            continue
        assert reg.parent in urns, reg.name
    for reg in deployed.monitor.registrations:
        if reg.custom and reg.type.startswith(
            ("aws:sqs/queue", "aws:sns/topic", "aws:lambda/function", "aws:iam/role:")
        ):
            assert reg.inputs["tags"]["Stack"] == "t", reg.name


def test_without_a_gateway_the_front_is_not_routed(pulumi_harness: PulumiHarness) -> None:
    pulumi_harness.run(lambda: AsyncEndpoint("ep", endpoint_args(endpoint_name="ep")))
    assert pulumi_harness.named("ep-front")
    assert not pulumi_harness.of_type("aws:lb/listenerRule:ListenerRule")


def test_front_zip_holds_only_the_shared_modules() -> None:
    sources = front_sources()
    assert set(sources) == {
        "serving/__init__.py",
        "serving/asyncq/__init__.py",
        "serving/asyncq/front.py",
        "serving/asyncq/invoke.py",
        "serving/asyncq/request.py",
        "common/__init__.py",
        "common/uris.py",
    }
    assert sources["serving/asyncq/__init__.py"] is None  # an empty marker: the real one imports the worker


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"endpoint_name": "bad_name"}, "endpoint_name"),
        ({"max_concurrent_invocations_per_instance": 0}, "max_concurrent_invocations_per_instance"),
        ({"output_prefix": "/abs"}, "output_prefix"),
        ({"model_key": "models/x.bin"}, "model_key"),
        ({"success_topic_arn": "arn:aws:sqs:us-east-1:123456789012:q"}, "success_topic_arn"),
        ({"include_inference_response_in": ["BOTH"]}, "include_inference_response_in"),
        ({"rule_priority": 5}, "rule_priority"),
        ({"variant_name": "all_traffic"}, "variant_name"),
        (
            {
                "scaling": async_scaling.BacklogScaling(
                    min_instances=3, max_instances=2, target_backlog_per_instance=1
                )
            },
            "scaling",
        ),
        ({"repository_arns": []}, "repository_arns"),
    ],
)
def test_bad_args_name_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"AsyncEndpointArgs.{field}"):
        endpoint_args(**over)
