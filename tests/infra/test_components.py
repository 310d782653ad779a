"""Each component instantiated on its own under mocks, and its Args validation."""

from __future__ import annotations

import base64
import json
import runpy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi
import pytest
from pulumi.runtime import config as runtime_config

from infra.components.compute import InstanceGroup, InstanceGroupArgs, InstanceRefreshArgs, WarmPoolArgs
from infra.components.iam import Roles, RolesArgs
from infra.components.network import Network, NetworkArgs
from infra.components.registry import ImageRepository, ImageRepositoryArgs
from infra.components.storage import ModelStore, ModelStoreArgs, lifecycle_rules

if TYPE_CHECKING:
    from tests.infra.conftest import PulumiHarness

TAGS = {"Project": "selfmaker", "Stack": "t", "ManagedBy": "pulumi"}
ROOT = Path(__file__).resolve().parents[2]
REPO = "123456789012.dkr.ecr.us-east-1.amazonaws.com/selfmaker-t/serving"


def network_args(**over: Any) -> NetworkArgs:
    base: dict[str, Any] = {
        "vpc_cidr": "10.1.0.0/16",
        "availability_zones": ["eu-west-1a", "eu-west-1b"],
        "region": "eu-west-1",
        "tags": TAGS,
    }
    return NetworkArgs(**{**base, **over})


def group_args(**over: Any) -> InstanceGroupArgs:
    base: dict[str, Any] = {
        "role": "serve",
        "accelerator": "cpu",
        "instance_types": ["m5.large", "c5.large"],
        "vpc_id": "vpc-1",
        "subnet_ids": ["subnet-a", "subnet-b"],
        "instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/p",
        "repository_url": REPO,
        "image_tag": "1.0",
        "region": "us-east-1",
        "log_group_name": "/selfmaker-t/g",
        "tags": TAGS,
        "ami_parameter": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
        "min_size": 1,
        "max_size": 3,
        "desired_capacity": 2,
        "ingress_security_group_ids": ["sg-alb"],
        "model_data_uri": "s3://models-b/models/m/model.tar.gz",
    }
    return InstanceGroupArgs(**{**base, **over})


def test_network_per_az_nat_and_no_optional_parts(pulumi_harness: PulumiHarness) -> None:
    pulumi_harness.run(
        lambda: Network(
            "net", network_args(nat_gateways="per-az", interface_endpoints=False, flow_logs=False)
        )
    )
    assert len(pulumi_harness.of_type("aws:ec2/natGateway:NatGateway")) == 2
    assert len(pulumi_harness.of_type("aws:ec2/eip:Eip")) == 2
    subnets = {s.name: s.inputs for s in pulumi_harness.of_type("aws:ec2/subnet:Subnet")}
    assert subnets["net-private-0"]["cidrBlock"] == "10.1.0.0/18"
    assert subnets["net-public-1"]["availabilityZone"] == "eu-west-1b"
    assert not pulumi_harness.of_type("aws:ec2/flowLog:FlowLog")
    (s3,) = pulumi_harness.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    assert s3.inputs["serviceName"] == "com.amazonaws.eu-west-1.s3"
    assert sorted(s3.inputs["routeTableIds"]) == sorted(
        r.id for r in pulumi_harness.of_type("aws:ec2/routeTable:RouteTable") if "private" in r.name
    )
    public_routes = [
        r.inputs for r in pulumi_harness.of_type("aws:ec2/route:Route") if r.name == "net-public-default"
    ]
    assert public_routes[0]["gatewayId"] == pulumi_harness.named("net-igw").id


def test_network_flow_logs_role_is_scoped_to_its_log_group(pulumi_harness: PulumiHarness) -> None:
    pulumi_harness.run(lambda: Network("net", network_args()))
    log_group = pulumi_harness.named("net-flow-logs").state["arn"]
    doc = json.loads(pulumi_harness.named("net-flow-logs-policy").inputs["policy"])
    assert doc["Statement"][0]["Resource"] == [log_group, f"{log_group}:*"]
    flow = pulumi_harness.named("net-flow-log").inputs
    assert (
        flow["logDestination"] == log_group
        and flow["iamRoleArn"] == pulumi_harness.named("net-flow-logs-role").state["arn"]
    )
    endpoints = [
        e.inputs
        for e in pulumi_harness.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
        if e.inputs["vpcEndpointType"] == "Interface"
    ]
    assert len(endpoints) == 4 and all(e["privateDnsEnabled"] is True for e in endpoints)
    assert all(e["securityGroupIds"] == [pulumi_harness.named("net-endpoints-sg").id] for e in endpoints)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"availability_zones": ["a"]}, "availability_zones"),
        ({"availability_zones": ["a", "a"]}, "availability_zones"),
        ({"nat_gateways": "none"}, "nat_gateways"),
        ({"vpc_cidr": "10.1.0.0/30"}, "vpc_cidr"),
        ({"region": ""}, "region"),
    ],
)
def test_network_args_validation(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^NetworkArgs\.{field}:"):
        network_args(**over)


def test_model_store_with_s3_managed_keys(pulumi_harness: PulumiHarness) -> None:
    pulumi_harness.run(
        lambda: ModelStore("ms", ModelStoreArgs(tags=TAGS, encryption="s3", outputs_expiration_days=7))
    )
    assert not pulumi_harness.of_type("aws:kms/key:Key")
    buckets = pulumi_harness.of_type("aws:s3/bucket:Bucket")
    assert sorted(b.inputs["tags"]["Purpose"] for b in buckets) == ["data", "models", "outputs"]
    assert all(b.inputs["forceDestroy"] is False for b in buckets)
    ownership = pulumi_harness.of_type("aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert {o.inputs["rule"]["objectOwnership"] for o in ownership} == {"BucketOwnerEnforced"}
    outputs = pulumi_harness.named("ms-outputs-lifecycle").inputs["rules"]
    assert {
        "id": "expire-outputs",
        "status": "Enabled",
        "filter": {"prefix": ""},
        "expiration": {"days": 7},
        "noncurrentVersionExpiration": {"noncurrentDays": 30},
    } in outputs


def test_load_balancer_logs_go_to_the_outputs_bucket_with_s3_managed_keys(
    pulumi_harness: PulumiHarness,
) -> None:
    # a region newer than August 2022 delivers as the log-delivery service, not an ELB account
    args = ModelStoreArgs(
        tags=TAGS, encryption="s3", load_balancer_logs=("gateway", "123456789012", "ap-southeast-5", "aws")
    )
    store: list[ModelStore] = []
    pulumi_harness.run(lambda: store.append(ModelStore("ms", args)))
    assert sorted(b.inputs["tags"]["Purpose"] for b in pulumi_harness.of_type("aws:s3/bucket:Bucket")) == [
        "data",
        "models",
        "outputs",
    ]
    policy = json.loads(pulumi_harness.named("ms-outputs-tls-only").inputs["policy"])
    (allow,) = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}
    outputs_arn = pulumi_harness.named("ms-outputs").state["arn"]
    assert (
        allow["Resource"] == f"{outputs_arn}/gateway/AWSLogs/123456789012/*"
        and allow["Action"] == "s3:PutObject"
    )
    for other in ("models", "data"):
        doc = json.loads(pulumi_harness.named(f"ms-{other}-tls-only").inputs["policy"])
        assert all(s["Effect"] == "Deny" for s in doc["Statement"])


def test_lifecycle_rules_and_store_args() -> None:
    args = ModelStoreArgs(tags=TAGS)
    assert [r["id"] for r in lifecycle_rules("models", args)] == ["abort-incomplete-multipart"]
    assert [r["id"] for r in lifecycle_rules("outputs", args)] == [
        "abort-incomplete-multipart",
        "expire-outputs",
    ]
    with pytest.raises(ValueError, match=r"^ModelStoreArgs\.encryption:"):
        ModelStoreArgs(tags=TAGS, encryption="none")
    with pytest.raises(ValueError, match=r"^ModelStoreArgs\.outputs_expiration_days:"):
        ModelStoreArgs(tags=TAGS, outputs_expiration_days=0)


def test_image_repository(pulumi_harness: PulumiHarness) -> None:
    pulumi_harness.run(lambda: ImageRepository("img", ImageRepositoryArgs("team/serving", TAGS, keep_last=3)))
    repo = pulumi_harness.named("img-repo").inputs
    assert (
        repo["name"] == "team/serving"
        and repo["imageTagMutability"] == "IMMUTABLE"
        and repo["forceDelete"] is False
    )
    policy = json.loads(pulumi_harness.named("img-lifecycle").inputs["policy"])
    assert policy["rules"][1]["selection"]["countNumber"] == 3
    assert pulumi_harness.named("img-lifecycle").inputs["repository"] == "team/serving"
    for bad in ("Team/Serving", "x", "a//b", "-a"):
        with pytest.raises(ValueError, match=r"^ImageRepositoryArgs\.repository_name:"):
            ImageRepositoryArgs(bad, TAGS)


def roles_args(**over: Any) -> RolesArgs:
    base: dict[str, Any] = {
        "models_bucket_arn": "arn:aws:s3:::m",
        "data_bucket_arn": "arn:aws:s3:::d",
        "outputs_bucket_arn": "arn:aws:s3:::o",
        "repository_arns": ["arn:aws:ecr:us-east-1:123456789012:repository/r"],
        "partition": "aws-cn",
        "region": "cn-north-1",
        "account_id": "123456789012",
        "prefix": "sm-t",
        "tags": TAGS,
    }
    return RolesArgs(**{**base, **over})


def test_roles_use_the_partition_and_optional_ssm(pulumi_harness: PulumiHarness) -> None:
    pulumi_harness.run(lambda: Roles("r", roles_args(ssm_access=False)))
    assert len(pulumi_harness.of_type("aws:iam/role:Role")) == 2  # serving, async (jobs: JobQueue's roles)
    assert len(pulumi_harness.of_type("aws:iam/instanceProfile:InstanceProfile")) == 2
    assert not pulumi_harness.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    doc = json.loads(pulumi_harness.named("r-async-policy").inputs["policy"])
    queues = next(s for s in doc["Statement"] if s["Sid"] == "Queues")
    assert queues["Resource"] == "arn:aws-cn:sqs:cn-north-1:123456789012:sm-t-*"
    assert "Kms" not in {s["Sid"] for s in doc["Statement"]}
    profile = pulumi_harness.named("r-serving-profile").inputs
    assert profile["role"] == pulumi_harness.named("r-serving").state["name"]


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"repository_arns": []}, "repository_arns"),
        ({"account_id": "12345"}, "account_id"),
        ({"region": ""}, "region"),
        ({"model_prefix": "/models"}, "model_prefix"),
        ({"tags": {"Project": "selfmaker"}}, "tags"),
    ],
)
def test_roles_args_validation(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^RolesArgs\.{field}:"):
        roles_args(**over)


def test_instance_group_serving_with_explicit_ami(pulumi_harness: PulumiHarness) -> None:
    pulumi_harness.run(
        lambda: InstanceGroup(
            "g",
            group_args(
                ami_id="ami-0123456789abcdef0", on_demand_base=1, spot_percentage=60, capacity_rebalance=True
            ),
        )
    )
    # an explicit AMI needs no SSM lookup
    assert not [c for c in pulumi_harness.mocks.calls if c[0] == "aws:ssm/getParameter:getParameter"]
    lt = pulumi_harness.named("g-lt").inputs
    assert lt["imageId"] == "ami-0123456789abcdef0" and "instanceType" not in lt
    assert lt["iamInstanceProfile"] == {"arn": "arn:aws:iam::123456789012:instance-profile/p"}
    assert lt["vpcSecurityGroupIds"] == [pulumi_harness.named("g-sg").id]
    assert lt["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 40
    script = base64.b64decode(lt["userData"]).decode()
    assert "MODEL_DATA=s3://models-b/models/m/model.tar.gz" in script
    asg = pulumi_harness.named("g-asg").inputs
    dist = asg["mixedInstancesPolicy"]["instancesDistribution"]
    assert (
        dist["onDemandPercentageAboveBaseCapacity"] == 40
        and dist["spotAllocationStrategy"] == "price-capacity-optimized"
    )
    spec = asg["mixedInstancesPolicy"]["launchTemplate"]["launchTemplateSpecification"]
    assert spec == {"launchTemplateId": pulumi_harness.named("g-lt").id, "version": "1"}
    assert asg["instanceRefresh"]["strategy"] == "Rolling" and asg["capacityRebalance"] is True
    assert "warmPool" not in asg
    ingress = pulumi_harness.named("g-ingress-0").inputs
    assert (ingress["referencedSecurityGroupId"], ingress["fromPort"]) == ("sg-alb", 8080)
    assert not [
        r
        for r in pulumi_harness.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.name.endswith("-peers")
    ]
    egress = pulumi_harness.named("g-https-out").inputs
    assert (egress["cidrIpv4"], egress["fromPort"], egress["toPort"]) == ("0.0.0.0/0", 443, 443)
    assert pulumi_harness.named("g-logs").inputs == {
        "name": "/selfmaker-t/g",
        "retentionInDays": 30,
        "tags": {**TAGS, "Group": "g", "Role": "serve"},
    }


def test_instance_group_with_warm_pool_uses_a_single_on_demand_type(pulumi_harness: PulumiHarness) -> None:
    args = group_args(
        accelerator="gpu",
        instance_types=["g5.xlarge"],
        min_size=0,
        desired_capacity=0,
        warm_pool=WarmPoolArgs(min_size=1, max_prepared_capacity=3),
        ami_parameter="/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id",
    )
    pulumi_harness.run(lambda: InstanceGroup("gw", args))
    lt = pulumi_harness.named("gw-lt").inputs
    assert lt["instanceType"] == "g5.xlarge" and lt["imageId"] == "ami-0fedcba9876543210"
    asg = pulumi_harness.named("gw-asg").inputs
    assert "mixedInstancesPolicy" not in asg
    assert asg["warmPool"] == {"poolState": "Stopped", "minSize": 1, "maxGroupPreparedCapacity": 3}


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"role": "batch"}, "role"),
        ({"accelerator": "tpu"}, "accelerator"),
        ({"instance_types": ["g5.xlarge"]}, "instance_types"),
        ({"instance_types": []}, "instance_types"),
        ({"subnet_ids": []}, "subnet_ids"),
        ({"desired_capacity": 5}, "desired_capacity"),
        ({"max_size": 0, "min_size": 0, "desired_capacity": 0}, "desired_capacity"),
        ({"spot_percentage": 120}, "spot_percentage"),
        ({"warm_pool": WarmPoolArgs(1)}, "warm_pool"),
        ({"warm_pool": WarmPoolArgs(1, state="Frozen"), "instance_types": ["m5.large"]}, "warm_pool"),
        ({"warm_pool": WarmPoolArgs(1), "instance_types": ["m5.large"], "spot_percentage": 10}, "warm_pool"),
        ({"ami_parameter": "ami-1"}, "ami_parameter"),
        ({"root_volume_gb": 2}, "root_volume_gb"),
        ({"image_tag": "a b"}, "image_tag"),
        ({"model_data_uri": None}, "model_data_uri"),
        ({"role": "train"}, "role"),  # training runs on AWS Batch (JobQueue)
        ({"refresh": InstanceRefreshArgs(checkpoint_percentages=[50, 90])}, "refresh"),
        ({"refresh": InstanceRefreshArgs(checkpoint_percentages=[50, 10, 100])}, "refresh"),
        ({"health_check_grace_period": -1}, "health_check_grace_period"),
        ({"endpoint_name": "churn"}, "endpoint_name"),
    ],
)
def test_instance_group_args_validation(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^InstanceGroupArgs\.{field}:"):
        group_args(**over)


def test_main_module_runs_the_program_by_path(
    pulumi_harness: PulumiHarness, dev_stack_config: dict[str, str]
) -> None:
    """What the Pulumi language host does: run ``infra/`` (its ``__main__.py``) by path."""
    runtime_config.set_all_config(dev_stack_config)

    def program() -> None:
        runpy.run_path(str(ROOT / "infra"), run_name="__main__")

    pulumi_harness.run(program)
    kinds = {r.type for r in pulumi_harness.monitor.registrations}
    assert "selfmaker:compute:InstanceGroup" in kinds and "aws:autoscaling/group:Group" in kinds


def test_a_bad_stack_config_stops_the_program_with_one_line(
    pulumi_harness: PulumiHarness, dev_stack_config: dict[str, str]
) -> None:
    """``pulumi.RunError``: the engine prints its message alone, without the program's traceback."""
    endpoints = json.loads(dev_stack_config["selfmaker:endpoints"])
    endpoints[0]["variants"][1]["name"] = endpoints[0]["variants"][0]["name"]
    runtime_config.set_all_config({**dev_stack_config, "selfmaker:endpoints": json.dumps(endpoints)})
    with pytest.raises(pulumi.RunError) as err:
        pulumi_harness.run(lambda: runpy.run_path(str(ROOT / "infra"), run_name="__main__"))
    assert str(err.value) == "selfmaker:endpoints[0].variants[1].name: duplicate variant name 'champion'"
    assert not pulumi_harness.monitor.registrations
