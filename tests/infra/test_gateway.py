"""The endpoint components under mocks: Gateway and RealtimeEndpoint on their own (a user's own program),
the whole program with an internet-facing gateway, and what a change of weights or of a model touches."""

from __future__ import annotations

import base64
import json
import re
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from pulumi.runtime import config as runtime_config

from infra import program
from infra.components.endpoints.gateway import NOT_FOUND_BODY, Gateway, GatewayArgs, Route
from infra.components.endpoints.realtime import (
    ManagedInstanceScalingArgs,
    ProductionVariantArgs,
    RealtimeEndpoint,
    RealtimeEndpointArgs,
    RolloutArgs,
)
from tests.infra.conftest import ROOT, stack_file_config
from tests.infra.test_program import check_gateway_policy, check_ingress_policy

if TYPE_CHECKING:
    from tests.infra.conftest import PulumiHarness, Registration

TAGS = {"Project": "selfmaker", "Stack": "t", "ManagedBy": "pulumi"}
CERT = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789"
REPO = "123456789012.dkr.ecr.us-east-1.amazonaws.com/selfmaker-t/serving"
CPU_AMI = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def gateway_args(**over: Any) -> GatewayArgs:
    base: dict[str, Any] = {
        "vpc_id": "vpc-1",
        "subnet_ids": ["subnet-a", "subnet-b"],
        "tags": TAGS,
        "allowed_cidrs": ["10.1.0.0/16"],
        "access_logs_bucket": "logs-bucket",
    }
    return GatewayArgs(**{**base, **over})


def variant(name: str, weight: float, **over: Any) -> ProductionVariantArgs:
    base: dict[str, Any] = {
        "variant_name": name,
        "model_data_uri": f"s3://models-b/models/{name}/model.tar.gz",
        "image_tag": "1.0",
        "ami_parameter": CPU_AMI,
        "initial_variant_weight": weight,
    }
    return ProductionVariantArgs(**{**base, **over})


def endpoint_args(
    gateway: Gateway, variants: list[ProductionVariantArgs], **over: Any
) -> RealtimeEndpointArgs:
    base: dict[str, Any] = {
        "gateway": gateway,
        "variants": variants,
        "priority_block": 120,
        "vpc_id": "vpc-1",
        "subnet_ids": ["subnet-a", "subnet-b"],
        "instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/p",
        "repository_url": REPO,
        "region": "us-east-1",
        "prefix": "selfmaker-t",
        "tags": TAGS,
    }
    return RealtimeEndpointArgs(**{**base, **over})


def test_internal_gateway_answers_unknown_paths_with_json_404(pulumi_harness: PulumiHarness) -> None:
    pulumi_harness.run(lambda: Gateway("gw", gateway_args(client_security_group_ids=["sg-workload"])))
    lb = pulumi_harness.named("gw-alb").inputs
    assert lb["internal"] is True and lb["loadBalancerType"] == "application"
    assert lb["dropInvalidHeaderFields"] is True and lb["securityGroups"] == [
        pulumi_harness.named("gw-sg").id
    ]
    assert lb["accessLogs"] == {"bucket": "logs-bucket", "prefix": "gateway", "enabled": True}
    listener = pulumi_harness.named("gw-listener").inputs
    assert (listener["port"], listener["protocol"]) == (80, "HTTP") and "certificateArn" not in listener
    (default,) = listener["defaultActions"]
    assert default["type"] == "fixed-response"
    assert default["fixedResponse"] == {
        "contentType": "application/json",
        "statusCode": "404",
        "messageBody": NOT_FOUND_BODY,
    }
    assert json.loads(NOT_FOUND_BODY)["__type"] == "ValidationError"
    clients = {
        r.name: r.inputs
        for r in pulumi_harness.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    }
    assert clients["gw-client-0"]["cidrIpv4"] == "10.1.0.0/16" and clients["gw-client-0"]["fromPort"] == 80
    assert clients["gw-client-sg-0"]["referencedSecurityGroupId"] == "sg-workload"
    out = pulumi_harness.named("gw-client-sg-0-out").inputs  # and the clients may reach it
    assert (out["securityGroupId"], out["referencedSecurityGroupId"], out["fromPort"]) == (
        "sg-workload",
        pulumi_harness.named("gw-sg").id,
        80,
    )


def test_internet_facing_gateway_is_https_only_with_tls12_and_mutual_tls(
    pulumi_harness: PulumiHarness,
) -> None:
    args = gateway_args(
        scheme="internet-facing",
        allowed_cidrs=["0.0.0.0/0"],
        certificate_arn=CERT,
        trust_store_ca_bundle="s3://certs-bucket/clients/ca.pem",
    )
    pulumi_harness.run(lambda: Gateway("gw", args))
    assert pulumi_harness.named("gw-alb").inputs["internal"] is False
    listener = pulumi_harness.named("gw-listener").inputs
    assert (listener["port"], listener["protocol"], listener["certificateArn"]) == (443, "HTTPS", CERT)
    assert listener["sslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    trust = pulumi_harness.named("gw-trust-store")
    assert (trust.inputs["caCertificatesBundleS3Bucket"], trust.inputs["caCertificatesBundleS3Key"]) == (
        "certs-bucket",
        "clients/ca.pem",
    )
    assert listener["mutualAuthentication"] == {"mode": "verify", "trustStoreArn": trust.state["arn"]}
    check_ingress_policy(pulumi_harness)
    (world,) = pulumi_harness.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert (world.inputs["cidrIpv4"], world.inputs["fromPort"]) == ("0.0.0.0/0", 443)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"scheme": "public"}, "scheme"),
        ({"subnet_ids": ["subnet-a"]}, "subnet_ids"),
        ({"scheme": "internet-facing", "allowed_cidrs": ["0.0.0.0/0"]}, "certificate_arn"),
        ({"scheme": "internet-facing", "allowed_cidrs": [], "certificate_arn": CERT}, "allowed_cidrs"),
        ({"certificate_arn": CERT, "ssl_policy": "ELBSecurityPolicy-2016-08"}, "ssl_policy"),
        ({"trust_store_ca_bundle": "s3://b-bucket/ca.pem"}, "trust_store_ca_bundle"),
        ({"allowed_cidrs": []}, "allowed_cidrs"),
    ],
)
def test_gateway_args_validation(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^GatewayArgs\.{field}:"):
        gateway_args(**over)


def test_add_route_refuses_what_an_alb_rule_cannot_take(pulumi_harness: PulumiHarness) -> None:
    paths = ["/endpoints/x/invocations"]

    def build() -> None:
        gw = Gateway("gw", gateway_args())
        gw.add_route("x", paths=paths, routes=[Route("arn:tg/a", 5)], priority=30)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"routes": [Route("arn:tg/a", 5)], "priority": 30}, "priority 30 is taken by 'x'"),
            ({"routes": [Route(f"arn:tg/{i}", 1) for i in range(6)], "priority": 31}, "1-5 target groups"),
            ({"routes": [Route("arn:tg/a", 1000)], "priority": 32}, "weights must be 0-999"),
            ({"routes": [Route("arn:tg/a", 0), Route("arn:tg/b", 0)], "priority": 33}, "not all 0"),
            ({"routes": [Route("arn:tg/a", 1)], "priority": 50001}, "is not 1-50000"),
            (
                {"routes": [Route("arn:tg/a", 1)], "priority": 34, "paths": ["/a", "/b", "/c", "/d", "/e"]},
                "at most 5 condition values",
            ),
            (
                {
                    "routes": [Route("arn:tg/a", 1)],
                    "priority": 35,
                    "paths": ["/a", "/b", "/c", "/d"],
                    "header": ("X-A", "b"),
                },
                "at most 5 condition values",
            ),
        ]
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=re.escape(message)):
                gw.add_route("y", **{"paths": paths, **kwargs})

    pulumi_harness.run(build)
    (rule,) = pulumi_harness.of_type("aws:lb/listenerRule:ListenerRule")
    assert rule.name == "gw-x-rule" and rule.inputs["priority"] == 30


def test_realtime_endpoint_variants_rules_scaling_rollout_and_alarms(pulumi_harness: PulumiHarness) -> None:
    def build() -> None:
        gw = Gateway("gw", gateway_args())
        RealtimeEndpoint(
            "churn",
            endpoint_args(
                gw,
                [
                    variant(
                        "champion",
                        0.9,
                        initial_instance_count=2,
                        managed_instance_scaling=ManagedInstanceScalingArgs(1, 6, 1000),
                    ),
                    variant("challenger", 0.1),
                ],
                rollout=RolloutArgs("linear", linear_step_percent=25, wait_seconds=120),
            ),
        )

    pulumi_harness.run(build)
    h = pulumi_harness
    tgs = {v: h.named(f"churn-{v}-tg") for v in ("champion", "challenger")}
    for tg in tgs.values():
        hc = tg.inputs["healthCheck"]
        assert (hc["path"], hc["matcher"], tg.inputs["port"], tg.inputs["protocol"]) == (
            "/ping",
            "200",
            8080,
            "HTTP",
        )
        assert tg.inputs["deregistrationDelay"] == 30 and tg.inputs["targetType"] == "instance"

    asg = h.named("churn-champion-asg").inputs
    assert asg["targetGroupArns"] == [tgs["champion"].state["arn"]]
    assert (asg["healthCheckType"], asg["healthCheckGracePeriod"]) == ("ELB", 300)
    assert (asg["minSize"], asg["maxSize"], asg["desiredCapacity"]) == (1, 6, 2)
    prefs = asg["instanceRefresh"]["preferences"]
    assert (prefs["minHealthyPercentage"], prefs["maxHealthyPercentage"]) == (
        100,
        200,
    )  # launch before terminate
    assert prefs["checkpointPercentages"] == [25, 50, 75, 100] and prefs["checkpointDelay"] == "120"
    assert prefs["autoRollback"] is True
    assert prefs["alarmSpecification"]["alarms"] == [
        h.named("churn-champion-5xx").state["name"],
        h.named("churn-champion-p99").state["name"],
    ]
    challenger = h.named("churn-challenger-asg").inputs
    assert (challenger["minSize"], challenger["maxSize"], challenger["desiredCapacity"]) == (1, 1, 1)
    # the scaling policy owns a scaled group's size after creation; an unscaled group's stays Pulumi's
    assert h.named("churn-champion-asg").ignore_changes == ["desiredCapacity"]
    assert h.named("churn-challenger-asg").ignore_changes == []

    errors = h.named("churn-champion-5xx").inputs
    assert (errors["namespace"], errors["metricName"], errors["statistic"]) == (
        "AWS/ApplicationELB",
        "HTTPCode_Target_5XX_Count",
        "Sum",
    )
    assert errors["dimensions"] == {
        "LoadBalancer": h.named("gw-alb").state["arnSuffix"],
        "TargetGroup": tgs["champion"].state["arnSuffix"],
    }
    latency = h.named("churn-champion-p99").inputs
    assert (latency["metricName"], latency["extendedStatistic"], latency["threshold"]) == (
        "TargetResponseTime",
        "p99",
        2.0,
    )

    (policy,) = h.of_type("aws:autoscaling/policy:Policy")
    assert policy.name == "churn-champion-scaling" and policy.inputs["policyType"] == "TargetTrackingScaling"
    tracking = policy.inputs["targetTrackingConfiguration"]
    assert tracking["targetValue"] == 1000.0
    assert tracking["predefinedMetricSpecification"] == {
        "predefinedMetricType": "ALBRequestCountPerTarget",
        "resourceLabel": f"{h.named('gw-alb').state['arnSuffix']}/{tgs['champion'].state['arnSuffix']}",
    }

    rules = {r.name: r.inputs for r in h.of_type("aws:lb/listenerRule:ListenerRule")}
    weighted = rules["gw-churn-weighted-rule"]
    assert weighted["priority"] == 129
    assert weighted["conditions"] == [
        {
            "pathPattern": {
                "values": ["/endpoints/churn/invocations", "/endpoints/churn/invocations-response-stream"]
            }
        },
        {"httpRequestMethod": {"values": ["POST"]}},
    ]
    assert weighted["actions"] == [
        {
            "type": "forward",
            "forward": {
                "targetGroups": [
                    {"arn": tgs["champion"].state["arn"], "weight": 999},
                    {"arn": tgs["challenger"].state["arn"], "weight": 111},
                ]
            },
        }
    ]
    for i, name in enumerate(("champion", "challenger")):
        rule = rules[f"gw-churn-target-{i + 1}-rule"]
        assert rule["priority"] == 121 + i < weighted["priority"]  # checked before the weighted rule
        assert rule["conditions"][2] == {
            "httpHeader": {"httpHeaderName": "X-Amzn-SageMaker-Target-Variant", "values": [name]}
        }
        assert rule["actions"][0]["forward"]["targetGroups"] == [{"arn": tgs[name].state["arn"], "weight": 1}]

    # variants accept the model-server port from the gateway alone; the gateway may reach them
    gw_sg = h.named("gw-sg").id
    for name in ("champion", "challenger"):
        assert h.named(f"churn-{name}-ingress-0").inputs["referencedSecurityGroupId"] == gw_sg
        assert (
            h.named(f"gw-churn-{name}-out").inputs["referencedSecurityGroupId"]
            == h.named(f"churn-{name}-sg").id
        )
    user_data = base64.b64decode(h.named("churn-challenger-lt").inputs["userData"]).decode()
    assert "SELFMAKER_ENDPOINT_NAME=churn" in user_data and "SELFMAKER_VARIANT_NAME=challenger" in user_data

    dashboard = h.named("churn-dashboard").inputs
    assert dashboard["dashboardName"] == "selfmaker-t-churn"
    widgets = json.loads(dashboard["dashboardBody"])["widgets"]
    assert tgs["challenger"].state["arnSuffix"] in json.dumps(widgets)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"variants": []}, "variants"),
        ({"variants": "dup"}, "variants"),
        ({"variants": "six"}, "variants"),
        ({"variants": "zero"}, "variants"),
        ({"priority_block": 125}, "priority_block"),
        ({"rollout": RolloutArgs("blue-green")}, "rollout"),
    ],
)
def test_realtime_endpoint_args_validation(
    pulumi_harness: PulumiHarness, over: dict[str, Any], field: str
) -> None:
    shapes = {
        "dup": [variant("a", 1), variant("a", 1)],
        "six": [variant(f"v{i}", 1) for i in range(6)],
        "zero": [variant("a", 0), variant("b", 0)],
    }
    if isinstance(over.get("variants"), str):
        over = {**over, "variants": shapes[over["variants"]]}

    def build() -> None:
        gw = Gateway("gw", gateway_args())
        with pytest.raises(ValueError, match=rf"^RealtimeEndpointArgs\.{field}:"):
            endpoint_args(gw, over.pop("variants", [variant("a", 1)]), **over)

    pulumi_harness.run(build)


# --- the whole program --------------------------------------------------------------------------------


def _run(harness: PulumiHarness, config: dict[str, str]) -> list[Registration]:
    runtime_config.set_all_config(config)
    return harness.run(program.main)


def _with(config: dict[str, str], **values: Any) -> dict[str, str]:
    return {**config, **{f"selfmaker:{k}": json.dumps(v) for k, v in values.items()}}


def _dev_endpoints() -> list[dict[str, Any]]:
    return yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]["selfmaker:endpoints"]


def test_internet_facing_stack_passes_the_policy_checks(pulumi_harness: PulumiHarness) -> None:
    config = _with(
        stack_file_config(ROOT / "Pulumi.dev.yaml"),
        gateway={"scheme": "internet-facing", "certificateArn": CERT, "allowedCidrs": ["0.0.0.0/0"]},
    )
    _run(pulumi_harness, config)
    h = pulumi_harness
    lb = h.named("gateway-alb").inputs
    public = sorted(s.id for s in h.of_type("aws:ec2/subnet:Subnet") if "public" in s.name)
    assert lb["internal"] is False and sorted(lb["subnets"]) == public
    assert lb["dropInvalidHeaderFields"] is True
    assert lb["accessLogs"]["bucket"] == h.named("store-logs").id and lb["accessLogs"]["enabled"] is True
    listener = h.named("gateway-listener").inputs
    assert (listener["protocol"], listener["port"], listener["sslPolicy"]) == (
        "HTTPS",
        443,
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
    )
    check_ingress_policy(h)
    check_gateway_policy(h)
    logs_policy = json.loads(h.named("store-logs-tls-only").inputs["policy"])
    (delivery,) = [s for s in logs_policy["Statement"] if s["Effect"] == "Allow"]
    assert delivery["Principal"] == {"AWS": "arn:aws:iam::127311923021:root"}  # us-east-1's ELB log account
    assert delivery["Resource"] == f"{h.named('store-logs').state['arn']}/gateway/AWSLogs/123456789012/*"
    assert {s["Sid"] for s in logs_policy["Statement"]} >= {"DenyInsecureTransport", "DenyOldTls"}


def test_stack_outputs_name_every_endpoint_url_and_variant(pulumi_harness: PulumiHarness) -> None:
    config = stack_file_config(ROOT / "Pulumi.dev.yaml")
    runtime_config.set_all_config(config)
    outputs: dict[str, Any] = {}

    def run() -> Any:
        built = program.build(program.load_config())
        import pulumi

        return pulumi.Output.all(url=built["endpointUrl"], endpoints=built["endpoints"]).apply(outputs.update)

    pulumi_harness.run(run)
    dns = pulumi_harness.named("gateway-alb").state["dnsName"]
    assert outputs["url"] == f"http://{dns}"
    churn = outputs["endpoints"]["churn"]
    assert churn["url"] == f"http://{dns}/endpoints/churn/invocations"
    assert churn["dashboard"] == "selfmaker-dev-churn"
    assert (
        churn["variants"]["champion"]["albWeight"] == 999
        and churn["variants"]["challenger"]["albWeight"] == 111
    )
    assert (
        churn["variants"]["champion"]["autoScalingGroup"]
        == pulumi_harness.named("churn-champion-asg").state["name"]
    )
    assert set(outputs["endpoints"]) == {"churn", "vision", "scoring", "churn-batch"}
    scoring = outputs["endpoints"]["scoring"]  # serverless: a function per variant instead of a group
    assert scoring["url"] == f"http://{dns}/endpoints/scoring/invocations"
    assert scoring["variants"]["AllTraffic"]["function"] == "selfmaker-dev-scoring-AllTraffic"
    assert scoring["variants"]["AllTraffic"]["serverlessConfig"] == {
        "memorySizeInMB": 2048,
        "maxConcurrency": 10,
        "provisionedConcurrency": 1,
    }
    batch = outputs["endpoints"]["churn-batch"]
    assert (
        batch["url"] == f"http://{dns}/endpoints/churn-batch/async-invocations" and batch["kind"] == "async"
    )
    assert batch["queueUrl"] == pulumi_harness.named("churn-batch-queue").state["url"]
    assert (
        batch["outputPath"]
        == f"s3://{pulumi_harness.named('store-outputs').state['bucket']}/async/churn-batch/output/"
    )


def _comparable(value: Any) -> Any:
    """Inputs with Pulumi assets (which compare by identity) replaced by what they hold."""
    import pulumi

    if isinstance(value, pulumi.AssetArchive):
        return ("archive", {k: _comparable(v) for k, v in value.assets.items()})
    if isinstance(value, pulumi.FileAsset):
        return ("file", value.path)
    if isinstance(value, pulumi.StringAsset):
        return ("string", value.text)
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _inputs(regs: list[Registration]) -> dict[tuple[str, str], Any]:
    return {(r.type, r.name): _comparable(r.inputs) for r in regs}


def _changed(before: dict[tuple[str, str], Any], after: dict[tuple[str, str], Any]) -> set[str]:
    assert set(before) == set(after), "resources were added or removed"
    return {key[1] for key in before if before[key] != after[key]}


def test_a_weight_change_touches_only_the_weighted_listener_rule(pulumi_harness: PulumiHarness) -> None:
    base = stack_file_config(ROOT / "Pulumi.dev.yaml")
    before = _inputs(_run(pulumi_harness, base))
    endpoints = _dev_endpoints()
    endpoints[0]["variants"][0]["initialVariantWeight"] = 0.5
    endpoints[0]["variants"][1]["initialVariantWeight"] = 0.5
    from tests.infra.conftest import new_harness

    after = _inputs(_run(new_harness(), _with(base, endpoints=endpoints)))
    assert _changed(before, after) == {"gateway-churn-weighted-rule"}
    rule = after[("aws:lb/listenerRule:ListenerRule", "gateway-churn-weighted-rule")]
    assert [g["weight"] for g in rule["actions"][0]["forward"]["targetGroups"]] == [999, 999]


def test_a_new_model_changes_only_that_variants_launch_template(pulumi_harness: PulumiHarness) -> None:
    """A new launch template version is what starts the guarded instance refresh; nothing else changes.

    (In AWS the template's new version number then flows into its Auto Scaling group, which starts the
    refresh; the mocks keep version 1, so the group's inputs stay equal here.)"""
    base = stack_file_config(ROOT / "Pulumi.dev.yaml")
    before = _inputs(_run(pulumi_harness, base))
    endpoints = _dev_endpoints()
    endpoints[0]["variants"][1]["modelKey"] = "models/churn/v3/model.tar.gz"
    from tests.infra.conftest import new_harness

    after = _inputs(_run(new_harness(), _with(base, endpoints=endpoints)))
    assert _changed(before, after) == {"churn-challenger-lt"}
    user_data = base64.b64decode(
        after[("aws:ec2/launchTemplate:LaunchTemplate", "churn-challenger-lt")]["userData"]
    )
    assert b"models/churn/v3/model.tar.gz" in user_data


def _rule_priorities(regs: list[Registration]) -> dict[str, int]:
    return {r.name: int(r.inputs["priority"]) for r in regs if r.type == "aws:lb/listenerRule:ListenerRule"}


def _priority_safe(before: dict[str, int], after: dict[str, int]) -> None:
    """What ALB needs of an update, given that the engine deletes removed rules last: a kept rule keeps its
    priority, and a new rule takes none that a rule of the old configuration holds."""
    moved = {name: (before[name], p) for name, p in after.items() if name in before and before[name] != p}
    assert not moved, f"rules change priority (refused while the old holder exists): {moved}"
    taken = {name: p for name, p in after.items() if name not in before and p in before.values()}
    assert not taken, f"new rules take priorities the old configuration still holds: {taken}"
    assert len(set(after.values())) == len(after)


@pytest.mark.parametrize(
    "change", ["remove-first-variant", "insert-variant", "reorder", "add-endpoint", "remove-endpoint"]
)
def test_variant_and_endpoint_changes_never_move_a_rule_priority(
    pulumi_harness: PulumiHarness, change: str
) -> None:
    base = stack_file_config(ROOT / "Pulumi.dev.yaml")
    before = _rule_priorities(_run(pulumi_harness, base))
    endpoints = _dev_endpoints()
    churn = endpoints[0]["variants"]
    if change == "remove-first-variant":  # retire the old champion
        endpoints[0]["variants"] = churn[1:]
    elif change == "insert-variant":
        churn.insert(1, {**churn[1], "name": "shadow-v3", "modelKey": "models/churn/v3/model.tar.gz"})
    elif change == "reorder":
        churn.reverse()
    elif change == "add-endpoint":
        endpoints.append({"name": "fraud", "variants": [{**churn[1], "name": "AllTraffic"}]})
    else:
        endpoints.pop(1)
    from tests.infra.conftest import new_harness

    after = _rule_priorities(_run(new_harness(), _with(base, endpoints=endpoints)))
    assert (after == before) == (change == "reorder")  # a reorder changes the header rules' contents alone
    _priority_safe(before, after)
