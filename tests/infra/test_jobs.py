"""`JobQueue` (AWS Batch) under mocks: every compute environment, queue, job definition and role, with the
policy checks a pre-deploy gate would make (no wildcards, private subnets, IMDSv2, encrypted volumes,
spot)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from infra import policies
from infra.components.jobs import JobEnvironmentArgs, JobQueue, JobQueueArgs

if TYPE_CHECKING:
    from tests.infra.conftest import PulumiHarness, Registration

TAGS = {"Project": "selfmaker", "Stack": "t", "ManagedBy": "pulumi"}
REPO = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/sm-t/training"
REPO_ARN = "arn:aws:ecr:eu-west-1:123456789012:repository/sm-t/training"
CPU = JobEnvironmentArgs(
    name="cpu",
    accelerator="cpu",
    instance_types=["c5.2xlarge", "m5.2xlarge"],
    image_tag="1.0",
    max_vcpus=128,
    spot=True,
    vcpus=8,
    memory_mib=14000,
)
GPU = JobEnvironmentArgs(
    name="gpu",
    accelerator="gpu",
    instance_types=["g5.2xlarge"],
    image_tag="1.0-gpu",
    on_demand=False,
    spot=True,
    priority=5,
    vcpus=8,
    memory_mib=28000,
    gpus=1,
    root_volume_gb=100,
)


def job_args(**over: Any) -> JobQueueArgs:
    base: dict[str, Any] = {
        "prefix": "sm-t",
        "environments": [CPU, GPU],
        "vpc_id": "vpc-1",
        "subnet_ids": ["subnet-p1", "subnet-p2"],
        "repository_url": REPO,
        "repository_arn": REPO_ARN,
        "models_bucket_arn": "arn:aws:s3:::models-b",
        "data_bucket_arn": "arn:aws:s3:::data-b",
        "outputs_bucket_arn": "arn:aws:s3:::outputs-b",
        "partition": "aws",
        "region": "eu-west-1",
        "account_id": "123456789012",
        "tags": TAGS,
        "kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/k",
        "retry_attempts": 4,
    }
    return JobQueueArgs(**{**base, **over})


@pytest.fixture
def jobs(pulumi_harness: PulumiHarness) -> PulumiHarness:
    pulumi_harness.run(lambda: JobQueue("jobs", job_args()))
    return pulumi_harness


def _by_name(harness: PulumiHarness, type_token: str) -> dict[str, Registration]:
    return {r.name: r for r in harness.of_type(type_token)}


def test_compute_environments_are_managed_private_and_scale_from_zero(jobs: PulumiHarness) -> None:
    envs = _by_name(jobs, "aws:batch/computeEnvironment:ComputeEnvironment")
    assert set(envs) == {"jobs-cpu-ce", "jobs-cpu-spot-ce", "jobs-gpu-spot-ce"}  # gpu: spot only
    profile = jobs.named("jobs-instance-profile").state["arn"]
    service = jobs.named("jobs-service").state["arn"]
    sg = jobs.named("jobs-sg").id
    for reg in envs.values():
        res = reg.inputs["computeResources"]
        assert reg.inputs["type"] == "MANAGED" and reg.inputs["serviceRole"] == service
        assert res["minVcpus"] == 0 and res["subnets"] == ["subnet-p1", "subnet-p2"]
        assert res["instanceRole"] == profile and res["securityGroupIds"] == [sg]
        assert "desiredVcpus" not in res and "bidPercentage" not in res
        assert reg.inputs["name"].startswith("sm-t-")  # the instance role's ECS permissions are scoped to it
    assert envs["jobs-cpu-ce"].inputs["computeResources"]["type"] == "EC2"
    assert envs["jobs-cpu-ce"].inputs["computeResources"]["allocationStrategy"] == "BEST_FIT_PROGRESSIVE"
    for key in ("jobs-cpu-spot-ce", "jobs-gpu-spot-ce"):
        res = envs[key].inputs["computeResources"]
        assert (res["type"], res["allocationStrategy"]) == ("SPOT", "SPOT_PRICE_CAPACITY_OPTIMIZED")
    gpu = envs["jobs-gpu-spot-ce"].inputs["computeResources"]
    assert gpu["instanceTypes"] == ["g5.2xlarge"] and gpu["ec2Configurations"] == [
        {"imageType": "ECS_AL2023_NVIDIA"}
    ]
    assert envs["jobs-cpu-ce"].inputs["computeResources"]["maxVcpus"] == 128


def test_launch_templates_require_imdsv2_and_encrypt_the_root_volume(jobs: PulumiHarness) -> None:
    templates = _by_name(jobs, "aws:ec2/launchTemplate:LaunchTemplate")
    assert set(templates) == {"jobs-cpu-lt", "jobs-gpu-lt"}
    for lt in templates.values():
        meta = lt.inputs["metadataOptions"]
        assert (meta["httpTokens"], meta["httpEndpoint"], meta["httpPutResponseHopLimit"]) == (
            "required",
            "enabled",
            2,
        )
        (mapping,) = lt.inputs["blockDeviceMappings"]
        assert mapping["ebs"]["encrypted"] == "true" and mapping["ebs"]["volumeType"] == "gp3"
    assert templates["jobs-gpu-lt"].inputs["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 100
    envs = _by_name(jobs, "aws:batch/computeEnvironment:ComputeEnvironment")
    ref = envs["jobs-cpu-spot-ce"].inputs["computeResources"]["launchTemplate"]
    assert ref["launchTemplateId"] == templates["jobs-cpu-lt"].id


def test_queues_carry_what_the_submitter_needs(jobs: PulumiHarness) -> None:
    queues = {r.inputs["name"]: r.inputs for r in jobs.of_type("aws:batch/jobQueue:JobQueue")}
    assert set(queues) == {"sm-t-cpu", "sm-t-cpu-spot", "sm-t-gpu-spot"}
    envs = _by_name(jobs, "aws:batch/computeEnvironment:ComputeEnvironment")
    assert queues["sm-t-cpu"]["computeEnvironmentOrders"] == [
        {"order": 1, "computeEnvironment": envs["jobs-cpu-ce"].state["arn"]}
    ]
    assert queues["sm-t-gpu-spot"]["priority"] == 5 and queues["sm-t-cpu"]["priority"] == 10
    cpu = queues["sm-t-cpu"]["tags"]
    assert cpu["selfmaker:capacity"] == "on-demand" and cpu["selfmaker:spot-queue"] == "sm-t-cpu-spot"
    assert (
        cpu["selfmaker:accelerator"] == "cpu"
        and queues["sm-t-gpu-spot"]["tags"]["selfmaker:accelerator"] == "gpu"
    )
    assert cpu["selfmaker:train-definition"] == "sm-t-cpu-train"
    assert cpu["selfmaker:transform-definition"] == "sm-t-cpu-transform"
    assert cpu["selfmaker:train-multinode-definition"] == "sm-t-cpu-train-multinode"
    spot = queues["sm-t-gpu-spot"]["tags"]
    assert spot["selfmaker:capacity"] == "spot" and "selfmaker:spot-queue" not in spot
    # AWS Batch runs no multi-node job on spot: a spot-only environment has no multi-node definition
    assert "selfmaker:train-multinode-definition" not in spot
    assert all(q["state"] == "ENABLED" and q["tags"]["Stack"] == "t" for q in queues.values())


def test_job_definitions_run_the_stack_image_with_its_resources_logs_and_retries(jobs: PulumiHarness) -> None:
    defs = {r.inputs["name"]: r.inputs for r in jobs.of_type("aws:batch/jobDefinition:JobDefinition")}
    assert set(defs) == {
        "sm-t-cpu-train",
        "sm-t-cpu-transform",
        "sm-t-cpu-train-multinode",
        "sm-t-gpu-train",
        "sm-t-gpu-transform",
    }
    job_role = jobs.named("jobs-job").state["arn"]
    for name, d in defs.items():
        assert (
            d["parameters"] == {"state": ""}
            and d["platformCapabilities"] == ["EC2"]
            and d["propagateTags"] is True
        )
        retry = d["retryStrategy"]
        assert retry["attempts"] == 4
        assert retry["evaluateOnExits"][0] == {
            "onStatusReason": "Host EC2*",
            "action": "retry",
        }  # spot reclaim
        assert retry["evaluateOnExits"][-1] == {"onReason": "*", "action": "exit"}  # the job's own failure
        if d["type"] == "multinode":
            nodes = json.loads(d["nodeProperties"])
            assert nodes["mainNode"] == 0 and nodes["nodeRangeProperties"][0]["targetNodes"] == "0:"
            container = nodes["nodeRangeProperties"][0]["container"]
        else:
            assert d["type"] == "container", name
            container = json.loads(d["containerProperties"])
        assert container["jobRoleArn"] == job_role
        assert container["logConfiguration"]["options"]["awslogs-group"] == "/sm-t/jobs"
        assert container["command"][-1] == "Ref::state"
        assert container["privileged"] is False
    cpu = json.loads(defs["sm-t-cpu-transform"]["containerProperties"])
    assert cpu["image"] == f"{REPO}:1.0" and cpu["command"] == ["transform-share", "--state", "Ref::state"]
    assert cpu["resourceRequirements"] == [
        {"type": "VCPU", "value": "8"},
        {"type": "MEMORY", "value": "14000"},
    ]
    gpu = json.loads(defs["sm-t-gpu-train"]["containerProperties"])
    assert gpu["image"] == f"{REPO}:1.0-gpu" and gpu["command"] == ["train-node", "--state", "Ref::state"]
    assert {"type": "GPU", "value": "1"} in gpu["resourceRequirements"]


def test_roles_are_least_privilege(jobs: PulumiHarness) -> None:
    docs = {r.name: json.loads(r.inputs["policy"]) for r in jobs.of_type("aws:iam/rolePolicy:RolePolicy")}
    assert set(docs) == {"jobs-instance-policy", "jobs-job-policy"}
    for doc in docs.values():
        assert policies.wildcard_violations(doc) == []
    job = {s["Sid"]: s for s in docs["jobs-job-policy"]["Statement"]}
    assert job["DataGet"]["Resource"] == "arn:aws:s3:::data-b/*"
    assert job["ModelsGet"]["Resource"] == "arn:aws:s3:::models-b/models/*"
    assert job["OutputsObjects"]["Resource"] == "arn:aws:s3:::outputs-b/*"
    assert job["EcrPull"]["Resource"] == [REPO_ARN] and job["Kms"]["Resource"].endswith(":key/k")
    trusts = {
        r.name: json.loads(r.inputs["assumeRolePolicy"])["Statement"][0]
        for r in jobs.of_type("aws:iam/role:Role")
    }
    assert trusts["jobs-job"]["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert trusts["jobs-service"]["Principal"] == {"Service": "batch.amazonaws.com"}
    assert trusts["jobs-instance"]["Principal"] == {"Service": "ec2.amazonaws.com"}
    attached = {
        r.name: r.inputs["policyArn"]
        for r in jobs.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    }
    assert attached["jobs-service-policy"] == "arn:aws:iam::aws:policy/service-role/AWSBatchServiceRole"
    # nodes of one job reach each other; nothing reaches them from outside the group
    peers = jobs.named("jobs-peers").inputs
    assert peers["referencedSecurityGroupId"] == peers["securityGroupId"] == jobs.named("jobs-sg").id
    assert not [
        r
        for r in jobs.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.inputs.get("cidrIpv4")
    ]


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"environments": []}, "environments"),
        ({"subnet_ids": []}, "subnet_ids"),
        ({"retry_attempts": 11}, "retry_attempts"),
        ({"account_id": "12"}, "account_id"),
        ({"environments": [CPU, CPU]}, "environments[1].name"),
        (
            {
                "environments": [
                    JobEnvironmentArgs(
                        name="x1", accelerator="tpu", instance_types=["c5.large"], image_tag="1"
                    )
                ]
            },
            "environments[0].accelerator",
        ),
        (
            {
                "environments": [
                    JobEnvironmentArgs(
                        name="x1", accelerator="gpu", instance_types=["c5.large"], image_tag="1"
                    )
                ]
            },
            "environments[0].instance_types",
        ),
        (
            {
                "environments": [
                    JobEnvironmentArgs(
                        name="x1",
                        accelerator="cpu",
                        instance_types=["c5.large"],
                        image_tag="1",
                        on_demand=False,
                    )
                ]
            },
            "environments[0].on_demand",
        ),
        (
            {
                "environments": [
                    JobEnvironmentArgs(
                        name="x1",
                        accelerator="cpu",
                        instance_types=["c5.large"],
                        image_tag="1",
                        vcpus=8,
                        max_vcpus=4,
                    )
                ]
            },
            "environments[0].max_vcpus",
        ),
        (
            {
                "environments": [
                    JobEnvironmentArgs(
                        name="x1", accelerator="cpu", instance_types=["c5.large"], image_tag="1", gpus=1
                    )
                ]
            },
            "environments[0].gpus",
        ),
        (
            {
                "environments": [
                    JobEnvironmentArgs(
                        name="x1", accelerator="cpu", instance_types=["c5.large"], image_tag="a b"
                    )
                ]
            },
            "environments[0].image_tag",
        ),
    ],
)
def test_args_are_validated_naming_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as err:
        job_args(**over)
    assert str(err.value).startswith(f"JobQueueArgs.{field}: ")
