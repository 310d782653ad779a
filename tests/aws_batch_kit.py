"""A `selfmaker:jobs` stack's AWS Batch side, created in moto's server: what the submission commands find.

The queues carry the tags ``infra/components/jobs.py`` gives them (the names of the job definitions, the
capacity, the spot queue), the job definitions run the stack's image from ECR and log to its log group.
moto runs no containers here (its Docker-less Batch: every job succeeds at once), so the tests run the
containers' side themselves, as local processes with the environment AWS Batch sets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import requests

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
REGION = "us-east-1"
REPOSITORY = "selfmaker-dev/training"
LOG_GROUP = "/selfmaker/selfmaker-dev/jobs"


@dataclass
class FakeStack:
    """Names of what :func:`create_stack` made."""

    image: str
    queues: dict[str, str] = field(default_factory=dict)
    definitions: dict[str, str] = field(default_factory=dict)


def use_simple_batch(endpoint: str) -> None:
    """moto's Batch without Docker: submitted jobs succeed at once (the test runs the containers' side)."""
    requests.post(
        f"{endpoint}/moto-api/config", json={"batch": {"use_docker": False}}, timeout=10
    ).raise_for_status()


def create_stack(
    endpoint: str, *, tag: str = "0.1.0", push: bool = True, prefix: str = "sm-test", accelerator: str = "cpu"
) -> FakeStack:
    """Compute environment, an on-demand and a spot queue, the three job definitions, the ECR image."""
    use_simple_batch(endpoint)
    kw: dict[str, Any] = {"endpoint_url": endpoint, "region_name": REGION}
    iam, ec2, batch, ecr, logs = (boto3.client(s, **kw) for s in ("iam", "ec2", "batch", "ecr", "logs"))
    role = iam.create_role(RoleName=f"{prefix}-batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"{prefix}-jobs", Description="jobs", VpcId=vpc)["GroupId"]
    try:
        ecr.create_repository(repositoryName=REPOSITORY)
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    registry = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
    if push:
        manifest = '{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}'
        try:
            ecr.put_image(repositoryName=REPOSITORY, imageManifest=manifest, imageTag=tag)
        except ecr.exceptions.ImageAlreadyExistsException:
            pass
    image = f"{registry}/{REPOSITORY}:{tag}"
    try:
        logs.create_log_group(logGroupName=LOG_GROUP)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    stack = FakeStack(image=image)
    log_config = {
        "logDriver": "awslogs",
        "options": {"awslogs-group": LOG_GROUP, "awslogs-stream-prefix": "selfmaker"},
    }
    container = {
        "image": image,
        "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "3600"}],
        "logConfiguration": log_config,
        "jobRoleArn": role,
    }
    retry = {
        "attempts": 3,
        "evaluateOnExit": [
            {"onStatusReason": "Host EC2*", "action": "RETRY"},
            {"onReason": "*", "action": "EXIT"},
        ],
    }
    for kind, command in (
        ("train", ["train-node", "--state", "Ref::state"]),
        ("transform", ["transform-share", "--state", "Ref::state"]),
    ):
        name = f"{prefix}-cpu-{kind}"
        batch.register_job_definition(
            jobDefinitionName=name,
            type="container",
            parameters={"state": ""},
            containerProperties={**container, "command": command},
            retryStrategy=retry,
        )
        stack.definitions[kind] = name
    name = f"{prefix}-cpu-train-multinode"
    batch.register_job_definition(
        jobDefinitionName=name,
        type="multinode",
        parameters={"state": ""},
        retryStrategy=retry,
        nodeProperties={
            "numNodes": 2,
            "mainNode": 0,
            "nodeRangeProperties": [
                {
                    "targetNodes": "0:",
                    "container": {**container, "command": ["train-node", "--state", "Ref::state"]},
                }
            ],
        },
    )
    stack.definitions["train-multinode"] = name
    for capacity in ("spot", "on-demand"):
        env = batch.create_compute_environment(
            computeEnvironmentName=f"{prefix}-cpu-{capacity}",
            type="UNMANAGED",
            state="ENABLED",
            serviceRole=role,
        )["computeEnvironmentArn"]
        queue = f"{prefix}-cpu" + ("-spot" if capacity == "spot" else "")
        tags = {
            "selfmaker:capacity": capacity,
            "selfmaker:accelerator": accelerator,
            "selfmaker:train-definition": stack.definitions["train"],
            "selfmaker:train-multinode-definition": stack.definitions["train-multinode"],
            "selfmaker:transform-definition": stack.definitions["transform"],
        }
        if capacity == "on-demand":
            tags["selfmaker:spot-queue"] = stack.queues["spot"]
        batch.create_job_queue(
            jobQueueName=queue,
            state="ENABLED",
            priority=10 if capacity == "spot" else 20,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env}],
            tags=tags,
        )
        stack.queues[capacity] = queue
    del sg, subnet
    return stack


def batch_env(endpoint: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a local process standing in for a Batch container: our code, moto for AWS."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "SELFMAKER_BATCH_WORKERS": "1",
        }
    )
    for key in (
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "AWS_BATCH_JOB_NODE_INDEX",
        "AWS_BATCH_JOB_NUM_NODES",
        "AWS_BATCH_JOB_MAIN_NODE_INDEX",
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS",
    ):
        env.pop(key, None)
    env.update(extra or {})
    return env


def start_container(command: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``selfmaker <command>`` as the container would run it (its own process group, output to ``log``)."""
    handle = log.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "selfmaker", *command],
            env=dict(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            start_new_session=True,
        )
    finally:
        handle.close()


def kill_container(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group (what a reclaimed spot instance does to everything on it)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
