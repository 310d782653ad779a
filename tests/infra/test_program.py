"""The whole program under mocks with the example stack file, checked like a policy pack would."""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import keyword
import re
from functools import cache
from typing import TYPE_CHECKING, Any

import pytest
from pulumi.runtime import config as runtime_config

from infra import config as stack_config
from infra import policies, program
from infra.naming import REQUIRED_TAG_KEYS

if TYPE_CHECKING:
    from tests.infra.conftest import PulumiHarness, Registration


@cache
def _accepts_tags(type_token: str) -> bool:
    """Whether the pulumi_aws resource class behind ``type_token`` has a ``tags`` input."""
    module_path, cls_name = type_token.split(":")[1:]
    name = module_path.split("/")[0].replace("-", "_")
    module = importlib.import_module(
        "pulumi_aws." + (f"{name}_" if keyword.iskeyword(name) else name)
    )  # lambda_
    cls = getattr(module, cls_name)
    return "tags" in inspect.signature(cls._internal_init).parameters


def run_dev_stack(harness: PulumiHarness, config: dict[str, str]) -> list[Registration]:
    runtime_config.set_all_config(config)
    return harness.run(program.main)


@pytest.fixture
def dev(dev_run: PulumiHarness) -> list[Registration]:
    return list(dev_run.monitor.registrations)


def aws_resources(regs: list[Registration]) -> list[Registration]:
    return [r for r in regs if r.type.startswith("aws:")]


def test_program_creates_every_component_kind(dev: list[Registration]) -> None:
    kinds = {r.type for r in dev if r.type.startswith("selfmaker:")}
    assert kinds == {
        "selfmaker:network:Network",
        "selfmaker:storage:ModelStore",
        "selfmaker:registry:ImageRepository",
        "selfmaker:iam:Roles",
        "selfmaker:compute:InstanceGroup",
        "selfmaker:endpoints:Gateway",
        "selfmaker:endpoints:RealtimeEndpoint",
        "selfmaker:endpoints:ServerlessEndpoint",
        "selfmaker:endpoints:AsyncEndpoint",
        "selfmaker:jobs:JobQueue",
    }
    groups = sorted(r.name for r in dev if r.type == "selfmaker:compute:InstanceGroup")
    assert groups == [
        "churn-batch-workers",
        "churn-challenger",
        "churn-champion",
        "vision-AllTraffic",
    ]  # training: Batch
    endpoints = {r.urn: r.name for r in dev if r.type == "selfmaker:endpoints:RealtimeEndpoint"}
    assert sorted(endpoints.values()) == ["churn", "vision"]
    # a variant's group is a child of its endpoint
    assert {
        endpoints.get(r.parent)
        for r in dev
        if r.name.startswith(("churn-c", "vision-")) and r.type == "selfmaker:compute:InstanceGroup"
    } == {"churn", "vision"}
    (async_urn,) = [
        r.urn for r in dev if r.type == "selfmaker:endpoints:AsyncEndpoint" and r.name == "churn-batch"
    ]
    assert [r.parent for r in dev if r.name == "churn-batch-workers"] == [async_urn]


def test_every_taggable_resource_carries_the_standard_and_user_tags(dev: list[Registration]) -> None:
    checked = 0
    for reg in aws_resources(dev):
        if not _accepts_tags(reg.type):
            continue
        tags = reg.inputs.get("tags")
        if reg.type == "aws:autoscaling/group:Group":
            tags = {t["key"]: t["value"] for t in tags or []}
        assert tags, f"{reg.type} {reg.name} has no tags"
        missing = [k for k in (*REQUIRED_TAG_KEYS, "Owner", "CostCenter") if k not in tags]
        assert not missing, f"{reg.type} {reg.name} lacks tags {missing}"
        assert tags["Stack"] == "dev" and tags["Project"] == "selfmaker" and tags["Owner"] == "ml-platform"
        checked += 1
    assert checked > 40


def test_every_aws_resource_has_a_selfmaker_component_as_parent(dev: list[Registration]) -> None:
    components = {r.urn: r for r in dev if r.type.startswith("selfmaker:")}
    for reg in aws_resources(dev):
        assert reg.parent in components, f"{reg.type} {reg.name} is parented to {reg.parent or 'the stack'}"
        assert reg.name.startswith(components[reg.parent].name + "-"), (
            f"{reg.name} is not named after its parent"
        )
    for comp in components.values():
        assert comp.parent.endswith("::selfmaker-dev") or "pulumi:pulumi:Stack" in comp.parent


def test_every_bucket_is_encrypted_versioned_private_and_tls_only(dev_run: PulumiHarness) -> None:
    buckets = {r.id: r for r in dev_run.of_type("aws:s3/bucket:Bucket")}
    assert len(buckets) == 4  # models, data, outputs + the gateway's access logs (ALB logs cannot use KMS)

    def by_bucket(type_token: str) -> dict[str, Registration]:
        found = {r.inputs["bucket"]: r for r in dev_run.of_type(type_token)}
        assert set(found) == set(buckets), f"{type_token} does not cover every bucket"
        return found

    key_arn = dev_run.named("store-key").state["arn"]
    logs_id = dev_run.named("store-logs").id
    for bucket_id, sse in by_bucket(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    ).items():
        default = sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
        if bucket_id == logs_id:
            assert default == {"sseAlgorithm": "AES256"}
        else:
            assert default == {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": key_arn}
    for ver in by_bucket("aws:s3/bucketVersioning:BucketVersioning").values():
        assert ver.inputs["versioningConfiguration"]["status"] == "Enabled"
    for pab in by_bucket("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").values():
        assert all(
            pab.inputs[k] is True
            for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
        )
    for bucket_id, pol in by_bucket("aws:s3/bucketPolicy:BucketPolicy").items():
        doc = json.loads(pol.inputs["policy"])
        deny = [s for s in doc["Statement"] if s["Effect"] == "Deny"]
        assert {"Bool": {"aws:SecureTransport": "false"}} in [s["Condition"] for s in deny]
        assert all(f"arn:aws:s3:::{bucket_id}/*" in s["Resource"] for s in deny)
    lifecycle = by_bucket("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    outputs_id = dev_run.named("store-outputs").id
    rules = {r["id"]: r for r in lifecycle[outputs_id].inputs["rules"]}
    assert rules["expire-outputs"]["expiration"]["days"] == 90
    assert "expire-outputs" not in {
        r["id"] for r in lifecycle[dev_run.named("store-models").id].inputs["rules"]
    }
    assert dev_run.named("store-key").inputs["enableKeyRotation"] is True


def test_every_launch_template_requires_imdsv2_and_encrypts_its_volumes(dev_run: PulumiHarness) -> None:
    assert not dev_run.of_type("aws:ec2/launchConfiguration:LaunchConfiguration")
    assert not dev_run.of_type("aws:ec2/instance:Instance")
    templates = dev_run.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    assert len(templates) == 6  # four variants' groups, the cpu and gpu Batch environments
    for lt in templates:
        meta = lt.inputs["metadataOptions"]
        assert meta["httpTokens"] == "required" and meta["httpEndpoint"] == "enabled"
        assert meta["httpPutResponseHopLimit"] == 2
        mappings = lt.inputs["blockDeviceMappings"]
        assert mappings and all(
            m["ebs"]["encrypted"] == "true" and m["ebs"]["volumeType"] == "gp3" for m in mappings
        )
        specs = {s["resourceType"]: s["tags"] for s in lt.inputs["tagSpecifications"]}
        assert {"instance", "volume"} <= set(specs) and all(specs[k]["Stack"] == "dev" for k in specs)
    for vol in dev_run.of_type("aws:ebs/volume:Volume"):
        assert vol.inputs.get("encrypted") is True


def test_amis_come_from_the_ssm_public_parameters(dev_run: PulumiHarness) -> None:
    ami = {
        lt.name: lt.inputs.get("imageId") for lt in dev_run.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    }
    # Batch picks its ECS-optimized AMI itself (the compute environment's ec2Configuration)
    assert ami == {
        "churn-champion-lt": "ami-0a1b2c3d4e5f60718",
        "churn-challenger-lt": "ami-0a1b2c3d4e5f60718",
        "vision-AllTraffic-lt": "ami-0fedcba9876543210",
        "churn-batch-workers-lt": "ami-0a1b2c3d4e5f60718",
        "jobs-cpu-lt": None,
        "jobs-gpu-lt": None,
    }
    asked = {
        args["name"] for token, args in dev_run.mocks.calls if token == "aws:ssm/getParameter:getParameter"
    }
    assert asked == {stack_config.SSM_AMI["cpu"], stack_config.SSM_AMI["gpu"]}


def _rules(harness: PulumiHarness) -> list[Registration]:
    return harness.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")


def check_ingress_policy(harness: PulumiHarness) -> None:
    """The policy for every stack: nothing accepts the world, except 443 on an internet-facing load
    balancer."""
    internet_facing = {
        r.urn: r for r in harness.of_type("aws:lb/loadBalancer:LoadBalancer") if r.inputs["internal"] is False
    }
    open_groups = {sg for lb in internet_facing.values() for sg in lb.inputs["securityGroups"]}
    for rule in _rules(harness):
        if rule.inputs.get("cidrIpv4") == "0.0.0.0/0" or rule.inputs.get("cidrIpv6") == "::/0":
            assert rule.inputs["securityGroupId"] in open_groups, (
                f"{rule.name} opens a non-gateway group to the world"
            )
            assert (rule.inputs["fromPort"], rule.inputs["toPort"], rule.inputs["ipProtocol"]) == (
                443,
                443,
                "tcp",
            )


def check_gateway_policy(harness: PulumiHarness) -> None:
    """The policy for load balancers: invalid headers dropped, access logs on, HTTPS with TLS 1.2+ (plain HTTP
    only on an internal one), targets behind ELB health checks on /ping."""
    balancers = {r.urn: r for r in harness.of_type("aws:lb/loadBalancer:LoadBalancer")}
    assert balancers
    for lb in balancers.values():
        assert lb.inputs["dropInvalidHeaderFields"] is True and lb.inputs["accessLogs"]["enabled"] is True
    by_arn = {lb.state["arn"]: lb for lb in balancers.values()}
    for listener in harness.of_type("aws:lb/listener:Listener"):
        lb = by_arn[listener.inputs["loadBalancerArn"]]
        if listener.inputs["protocol"] == "HTTPS":
            assert re.match(
                r"^ELBSecurityPolicy-(TLS13-1-[23]|TLS-1-2|FS-1-2)-", listener.inputs["sslPolicy"]
            )
        else:
            assert lb.inputs["internal"] is True, (
                f"{listener.name}: plain HTTP on an internet-facing load balancer"
            )
    instance_groups = {
        tg.state["arn"]: tg
        for tg in harness.of_type("aws:lb/targetGroup:TargetGroup")
        if tg.inputs.get("targetType") == "instance"
    }
    for tg in instance_groups.values():
        assert tg.inputs["healthCheck"]["path"] == "/ping"
    for asg in harness.of_type("aws:autoscaling/group:Group"):
        if asg.inputs.get("targetGroupArns"):
            assert set(asg.inputs["targetGroupArns"]) <= set(instance_groups)
            assert asg.inputs["healthCheckType"] == "ELB" and asg.inputs["healthCheckGracePeriod"] >= 60


def test_load_balancers_drop_bad_headers_log_and_check_health(dev_run: PulumiHarness) -> None:
    check_gateway_policy(dev_run)


def test_no_ingress_from_the_world_and_groups_reference_each_other(dev_run: PulumiHarness) -> None:
    for sg in dev_run.of_type("aws:ec2/securityGroup:SecurityGroup") + dev_run.of_type(
        "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
    ):
        for rule in sg.inputs.get("ingress") or []:
            assert "0.0.0.0/0" not in (rule.get("cidrBlocks") or []) and "::/0" not in (
                rule.get("ipv6CidrBlocks") or []
            )
    for rule in dev_run.of_type("aws:ec2/securityGroupRule:SecurityGroupRule"):
        assert rule.inputs["type"] != "ingress" or "0.0.0.0/0" not in (rule.inputs.get("cidrBlocks") or [])
    ingress = _rules(dev_run)
    assert ingress
    gateway_sg = dev_run.named("gateway-sg").id
    check_ingress_policy(dev_run)
    for rule in ingress:
        if rule.inputs["securityGroupId"] != gateway_sg:  # only the gateway is open to client CIDRs
            assert rule.inputs.get("cidrIpv4") is None and rule.inputs.get("cidrIpv6") is None
            assert rule.inputs["referencedSecurityGroupId"], (
                f"{rule.name} does not reference a security group"
            )
    workload = dev_run.named("network-workload-sg").id
    # the internal gateway accepts the VPC and the stack's own instances, on its listener port only
    clients = {r.name: r.inputs for r in ingress if r.inputs["securityGroupId"] == gateway_sg}
    assert {
        (c.get("cidrIpv4"), c.get("referencedSecurityGroupId"), c["fromPort"], c["toPort"])
        for c in clients.values()
    } == {("10.20.0.0/16", None, 80, 80), (None, workload, 80, 80)}
    # every variant accepts the model-server port from the gateway alone, and the gateway may reach it
    for variant in ("churn-champion", "churn-challenger", "vision-AllTraffic"):
        sources = [
            r.inputs for r in ingress if r.inputs["securityGroupId"] == dev_run.named(f"{variant}-sg").id
        ]
        assert [(r["referencedSecurityGroupId"], r["fromPort"], r["toPort"]) for r in sources] == [
            (gateway_sg, 8080, 8080)
        ]
        out = dev_run.named(f"gateway-{variant}-out").inputs
        assert (out["securityGroupId"], out["referencedSecurityGroupId"], out["fromPort"]) == (
            gateway_sg,
            dev_run.named(f"{variant}-sg").id,
            8080,
        )
    assert dev_run.named("network-endpoints-https").inputs["referencedSecurityGroupId"] == workload
    peers = dev_run.named("jobs-peers").inputs
    assert peers["referencedSecurityGroupId"] == peers["securityGroupId"] == dev_run.named("jobs-sg").id
    peers_out = dev_run.named("network-workload-peers-out").inputs
    assert peers_out["referencedSecurityGroupId"] == peers_out["securityGroupId"] == workload
    for egress in dev_run.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"):
        if egress.inputs.get("cidrIpv4") == "0.0.0.0/0":  # the only egress to the world is HTTPS
            assert (egress.inputs["ipProtocol"], egress.inputs["fromPort"], egress.inputs["toPort"]) == (
                "tcp",
                443,
                443,
            )
    default_sg = dev_run.named("network-default-sg").inputs
    assert default_sg["ingress"] == [] and default_sg["egress"] == []


def test_no_iam_policy_grants_wildcards(dev_run: PulumiHarness) -> None:
    docs = [json.loads(r.inputs["policy"]) for r in dev_run.of_type("aws:iam/rolePolicy:RolePolicy")]
    docs += [json.loads(r.inputs["policy"]) for r in dev_run.of_type("aws:iam/policy:Policy")]
    assert (
        len(docs) == 8
    )  # serving, async, flow logs, the serverless function, the async front and workers, Batch x2
    for doc in docs:
        assert policies.wildcard_violations(doc) == []
    attached = {
        r.inputs["policyArn"] for r in dev_run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    }
    assert attached == {
        "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
        "arn:aws:iam::aws:policy/service-role/AWSBatchServiceRole",
    }
    services = set()
    for role in dev_run.of_type("aws:iam/role:Role"):
        trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
        services.add(trust["Principal"]["Service"])
        if (
            trust["Principal"]["Service"] != "ec2.amazonaws.com"
        ):  # services acting for the account: confused deputy
            assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}
    assert services == {
        "ec2.amazonaws.com",
        "vpc-flow-logs.amazonaws.com",
        "lambda.amazonaws.com",
        "batch.amazonaws.com",
        "ecs-tasks.amazonaws.com",
    }


def test_roles_are_scoped_to_the_stack_buckets_and_repositories(dev_run: PulumiHarness) -> None:
    serving = json.loads(dev_run.named("roles-serving-policy").inputs["policy"])
    by_sid = {s["Sid"]: s for s in serving["Statement"]}
    models = dev_run.named("store-models").state["arn"]
    assert by_sid["ModelsGet"]["Resource"] == f"{models}/models/*"
    assert by_sid["EcrPull"]["Resource"] == sorted(
        r.state["arn"] for r in dev_run.of_type("aws:ecr/repository:Repository")
    )
    assert by_sid["Kms"]["Resource"] == dev_run.named("store-key").state["arn"]
    assert by_sid["Logs"]["Resource"][0] == "arn:aws:logs:us-east-1:123456789012:log-group:/selfmaker-dev/*"
    jobs = {s["Sid"]: s for s in json.loads(dev_run.named("jobs-job-policy").inputs["policy"])["Statement"]}
    outputs = dev_run.named("store-outputs").state["arn"]
    data = dev_run.named("store-data").state["arn"]
    assert jobs["OutputsObjects"]["Resource"] == f"{outputs}/*"  # outputs, checkpoints, job state
    assert set(jobs["OutputsObjects"]["Action"]) == {
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:GetObject",
        "s3:DeleteObject",
    }
    assert jobs["DataGet"]["Resource"] == f"{data}/*" and "s3:PutObject" not in json.dumps(jobs["DataGet"])
    assert jobs["ModelsGet"]["Resource"] == f"{models}/models/*"
    assert jobs["EcrPull"]["Resource"] == [
        dev_run.named("training-images-repo").state["arn"]
    ]  # the jobs' image only
    assert jobs["Logs"]["Resource"][0] == "arn:aws:logs:us-east-1:123456789012:log-group:/selfmaker-dev/jobs"
    instance = {
        s["Sid"]: s for s in json.loads(dev_run.named("jobs-instance-policy").inputs["policy"])["Statement"]
    }
    assert instance["EcsAgent"]["Resource"] == [
        "arn:aws:ecs:us-east-1:123456789012:cluster/AWSBatch-selfmaker-dev-*",
        "arn:aws:ecs:us-east-1:123456789012:container-instance/AWSBatch-selfmaker-dev-*",
    ]
    assert "s3:GetObject" not in json.dumps(instance)  # the data is the job role's, not the instance's
    asynchronous = {
        s["Sid"]: s for s in json.loads(dev_run.named("roles-async-policy").inputs["policy"])["Statement"]
    }
    assert asynchronous["Queues"]["Resource"] == "arn:aws:sqs:us-east-1:123456789012:selfmaker-dev-*"
    assert asynchronous["Topics"]["Resource"] == "arn:aws:sns:us-east-1:123456789012:selfmaker-dev-*"


def test_network_spans_two_azs_with_private_subnets_nat_and_endpoints(dev_run: PulumiHarness) -> None:
    vpc = dev_run.named("network-vpc").inputs
    assert vpc["cidrBlock"] == "10.20.0.0/16" and vpc["enableDnsHostnames"] is True
    subnets = dev_run.of_type("aws:ec2/subnet:Subnet")
    private = [s.inputs for s in subnets if s.inputs["tags"]["Tier"] == "private"]
    assert sorted(s["availabilityZone"] for s in private) == ["us-east-1a", "us-east-1b"]
    assert all(s["mapPublicIpOnLaunch"] is False for s in private)
    assert len(dev_run.of_type("aws:ec2/natGateway:NatGateway")) == 1  # natGateways: single
    endpoints = {
        e.inputs["serviceName"]: e.inputs for e in dev_run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    }
    assert endpoints["com.amazonaws.us-east-1.s3"]["vpcEndpointType"] == "Gateway"
    assert {
        "com.amazonaws.us-east-1.ecr.api",
        "com.amazonaws.us-east-1.ecr.dkr",
        "com.amazonaws.us-east-1.sqs",
        "com.amazonaws.us-east-1.logs",
    } <= set(endpoints)
    (azs,) = [
        args
        for token, args in dev_run.mocks.calls
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones"
    ]
    assert azs["state"] == "available"
    assert azs["filters"] == [{"name": "opt-in-status", "values": ["opt-in-not-required"]}]
    flow = dev_run.of_type("aws:ec2/flowLog:FlowLog")
    assert len(flow) == 1 and flow[0].inputs["trafficType"] == "ALL"


def test_asgs_use_private_subnets_and_the_configured_capacity_mix(dev_run: PulumiHarness) -> None:
    private_ids = sorted(s.id for s in dev_run.of_type("aws:ec2/subnet:Subnet") if "private" in s.name)
    asgs = {a.name: a.inputs for a in dev_run.of_type("aws:autoscaling/group:Group")}
    for asg in asgs.values():
        assert sorted(asg["vpcZoneIdentifiers"]) == private_ids
        assert "launchConfiguration" not in asg
    cpu = asgs["churn-champion-asg"]
    assert (cpu["minSize"], cpu["maxSize"], cpu["desiredCapacity"]) == (1, 4, 2)
    dist = cpu["mixedInstancesPolicy"]["instancesDistribution"]
    assert (dist["onDemandBaseCapacity"], dist["onDemandPercentageAboveBaseCapacity"]) == (1, 0)
    overrides = [o["instanceType"] for o in cpu["mixedInstancesPolicy"]["launchTemplate"]["overrides"]]
    assert overrides == ["c5.xlarge", "c6i.xlarge", "m5.xlarge"]
    assert cpu["capacityRebalance"] is True
    gpu = asgs["vision-AllTraffic-asg"]
    assert "mixedInstancesPolicy" not in gpu and gpu["warmPool"] == {"poolState": "Stopped", "minSize": 1}
    assert gpu["launchTemplate"]["id"] == dev_run.named("vision-AllTraffic-lt").id
    assert dev_run.named("vision-AllTraffic-lt").inputs["instanceType"] == "g5.xlarge"


def _user_data(harness: PulumiHarness, group: str) -> str:
    return base64.b64decode(harness.named(f"{group}-lt").inputs["userData"]).decode()


def test_user_data_runs_the_serving_image(dev_run: PulumiHarness) -> None:
    registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    models_bucket = dev_run.named("store-models").id
    cpu = _user_data(dev_run, "churn-champion")
    assert f"IMAGE={registry}/selfmaker-dev/serving:0.1.0" in cpu
    assert f"MODEL_DATA=s3://{models_bucket}/models/churn/v1/model.tar.gz" in cpu and '"$IMAGE" serve' in cpu
    assert "dnf install -y docker" in cpu and "--gpus all" not in cpu
    assert "-e SAGEMAKER_MODEL_SERVER_WORKERS=2" in cpu
    # the model server answers /endpoints/churn/invocations as variant champion
    assert "-e SELFMAKER_ENDPOINT_NAME=churn" in cpu and "-e SELFMAKER_VARIANT_NAME=champion" in cpu
    assert "LOG_GROUP=/selfmaker-dev/churn-champion" in cpu
    assert f"MODEL_DATA=s3://{models_bucket}/models/churn/v2/model.tar.gz" in _user_data(
        dev_run, "churn-challenger"
    )
    gpu = _user_data(dev_run, "vision-AllTraffic")
    assert "--gpus all" in gpu and "dnf install" not in gpu
    assert f"IMAGE={registry}/selfmaker-dev/serving:0.1.0-gpu" in gpu
    log_groups = {
        r.inputs["name"] for r in dev_run.of_type("aws:cloudwatch/logGroup:LogGroup") if "name" in r.inputs
    }
    assert {
        "/selfmaker-dev/churn-champion",
        "/selfmaker-dev/vision-AllTraffic",
        "/selfmaker-dev/jobs",
    } <= log_groups


def test_ecr_repositories_scan_on_push_keep_tags_immutable_and_expire_old_images(
    dev_run: PulumiHarness,
) -> None:
    repos = {r.inputs["name"]: r.inputs for r in dev_run.of_type("aws:ecr/repository:Repository")}
    assert set(repos) == {"selfmaker-dev/serving", "selfmaker-dev/training"}
    for repo in repos.values():
        assert repo["imageTagMutability"] == "IMMUTABLE"
        assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
        assert repo["encryptionConfigurations"] == [{"encryptionType": "AES256"}]
    for policy in dev_run.of_type("aws:ecr/lifecyclePolicy:LifecyclePolicy"):
        rules = json.loads(policy.inputs["policy"])["rules"]
        assert rules[-1]["selection"] == {
            "tagStatus": "any",
            "countType": "imageCountMoreThan",
            "countNumber": 20,
        }


def test_s3_managed_encryption_and_per_az_nat_without_endpoints_or_flow_logs(
    pulumi_harness: PulumiHarness, dev_stack_config: dict[str, str]
) -> None:
    config = {
        **dev_stack_config,
        "selfmaker:encryption": "s3",
        "selfmaker:natGateways": "per-az",
        "selfmaker:azCount": "3",
        "selfmaker:interfaceEndpoints": "false",
        "selfmaker:flowLogs": "false",
    }
    regs = run_dev_stack(pulumi_harness, config)
    assert not [r for r in regs if r.type == "aws:kms/key:Key"]
    for sse in pulumi_harness.of_type(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    ):
        assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "AES256"}
    nats = pulumi_harness.of_type("aws:ec2/natGateway:NatGateway")
    assert len(nats) == 3
    routes = {r.name: r.inputs for r in pulumi_harness.of_type("aws:ec2/route:Route") if "private" in r.name}
    assert sorted(r["natGatewayId"] for r in routes.values()) == sorted(n.id for n in nats)
    assert [
        e.inputs["vpcEndpointType"] for e in pulumi_harness.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    ] == ["Gateway"]
    assert not pulumi_harness.of_type("aws:ec2/flowLog:FlowLog")
    serving = json.loads(pulumi_harness.named("roles-serving-policy").inputs["policy"])
    assert "Kms" not in {s["Sid"] for s in serving["Statement"]}
    assert policies.wildcard_violations(serving) == []


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("selfmaker:azCount", "1", "selfmaker:azCount"),
        ("selfmaker:natGateways", "two", "selfmaker:natGateways"),
        ("selfmaker:vpcCidr", "10.0.0.1/16", "selfmaker:vpcCidr"),
        ("selfmaker:encryption", "none", "selfmaker:encryption"),
        ("selfmaker:keepImgs", "5", "selfmaker:keepImgs"),
        (
            "selfmaker:groups",
            '[{"name": "x1", "role": "serve", "modelKey": "models/m.tar.gz", "spotPercentage": 150}]',
            "selfmaker:groups[0].spotPercentage",
        ),
        ("selfmaker:groups", "[not json", "selfmaker:groups"),
        # issue 21's endpoint mistakes fail the whole program (pulumi preview), not only the config parser
        (
            "selfmaker:endpoints",
            '[{"name": "e", "variants": [{"name": "v", "modelKey": "models/m.tar.gz", '
            '"serverless": {"memorySizeInMB": 1536, "maxConcurrency": 5}}]}]',
            "selfmaker:endpoints[0].variants[0].serverless.memorySizeInMB",
        ),
        (
            "selfmaker:endpoints",
            '[{"name": "e", "variants": [{"name": "v", "modelKey": "models/m.tar.gz", '
            '"serverless": {"memorySizeInMB": 2048, "maxConcurrency": 201}}]}]',
            "selfmaker:endpoints[0].variants[0].serverless.maxConcurrency",
        ),
        (
            "selfmaker:endpoints",
            '[{"name": "e", "variants": [{"name": "i", "modelKey": "models/m.tar.gz", '
            '"initialInstanceCount": 1}, {"name": "v", "modelKey": "models/m.tar.gz", '
            '"serverless": {"memorySizeInMB": 2048, "maxConcurrency": 5}}]}]',
            "selfmaker:endpoints[0].variants[1].serverless",
        ),
        (
            "selfmaker:endpoints",
            '[{"name": "e", "async": {"maxConcurrentInvocationsPerInstance": 2}, "variants": '
            '[{"name": "v", "modelKey": "models/m.tar.gz", '
            '"serverless": {"memorySizeInMB": 2048, "maxConcurrency": 5}}]}]',
            "selfmaker:endpoints[0].variants[0].serverless",
        ),
    ],
)
def test_bad_stack_config_fails_naming_the_field(
    pulumi_harness: PulumiHarness, dev_stack_config: dict[str, str], key: str, value: str, field: str
) -> None:
    with pytest.raises(stack_config.ConfigError) as err:
        run_dev_stack(pulumi_harness, {**dev_stack_config, key: value})
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")
    assert not pulumi_harness.monitor.registrations  # nothing planned


def test_more_azs_than_the_region_has_is_a_config_error(
    pulumi_harness: PulumiHarness, dev_stack_config: dict[str, str]
) -> None:
    with pytest.raises(
        stack_config.ConfigError, match=r"^selfmaker:azCount: 4 AZs requested but us-east-1 offers 3"
    ):
        run_dev_stack(pulumi_harness, {**dev_stack_config, "selfmaker:azCount": "4"})


def test_missing_image_tag_is_reported(
    pulumi_harness: PulumiHarness, dev_stack_config: dict[str, str]
) -> None:
    config = {k: v for k, v in dev_stack_config.items() if k != "selfmaker:imageTag"}
    with pytest.raises(stack_config.ConfigError, match=r"^selfmaker:imageTag: required"):
        run_dev_stack(pulumi_harness, config)


def _snake_keys(value: Any, path: str = "") -> list[str]:
    """Keys that were not translated to the provider's camelCase names (a misspelt nested input)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("tags", "variables"):  # user-chosen keys (tags, a Lambda function's environment)
                continue
            if "_" in key:
                found.append(f"{path}.{key}")
            found += _snake_keys(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _snake_keys(item, f"{path}[{i}]")
    return found


def test_every_nested_input_uses_a_known_provider_property(dev_run: PulumiHarness) -> None:
    bad = {
        f"{r.name}{path}"
        for r in aws_resources(dev_run.monitor.registrations)
        for path in _snake_keys(r.inputs)
    }
    assert not bad, sorted(bad)


def test_async_endpoint_is_routed_in_its_own_priority_block_and_exported(dev_run: PulumiHarness) -> None:
    from infra import endpoints as endpoint_logic

    blocks = endpoint_logic.priority_blocks(["churn", "vision", "churn-batch"])
    rules = {r.name: r.inputs for r in dev_run.of_type("aws:lb/listenerRule:ListenerRule")}
    rule = rules["gateway-churn-batch-async-rule"]
    assert rule["priority"] == blocks["churn-batch"] + endpoint_logic.BLOCK - 1
    assert {"pathPattern": {"values": ["/endpoints/churn-batch/async-invocations"]}} in rule["conditions"]
    assert len({r["priority"] for r in rules.values()}) == len(rules)  # no two rules share a priority
    # workers scale from zero on backlog; the front may only enqueue
    asg = dev_run.named("churn-batch-workers-asg").inputs
    assert (asg["minSize"], asg["maxSize"]) == (0, 4)
    assert (
        dev_run.named("churn-batch-backlog-tracking").inputs["targetTrackingConfiguration"]["targetValue"]
        == 4
    )
    front = json.loads(dev_run.named("churn-batch-front-policy").inputs["policy"])
    sqs = {
        a
        for stmt in front["Statement"]
        for a in ([stmt["Action"]] if isinstance(stmt["Action"], str) else stmt["Action"])
        if a.startswith("sqs:")
    }
    assert sqs == {"sqs:SendMessage"}
    outputs = dev_run.named("churn-batch-front").inputs["environment"]["variables"]
    assert (
        outputs["SELFMAKER_OUTPUT_PATH"]
        == f"s3://{dev_run.named('store-outputs').state['bucket']}/async/churn-batch/output/"
    )
    assert (
        outputs["SELFMAKER_INPUT_LOCATIONS"]
        == f"s3://{dev_run.named('store-data').state['bucket']}/async/churn-batch/"
    )
