"""Training and transform jobs on AWS Batch: find the stack's queue and job definitions, submit, watch.

A ``selfmaker:jobs`` stack (``infra/components/jobs.py``) tags each job queue with what a submission needs,
so a queue name or ARN is enough (no stack file, no Pulumi): ``selfmaker:capacity`` (``on-demand`` /
``spot``), ``selfmaker:spot-queue`` (the spot queue of the same accelerator) and the names of the job
definitions for ``train``, ``train-multinode`` and ``transform``. The region and credentials come from the
usual AWS settings (``AWS_REGION`` / profile; ``AWS_ENDPOINT_URL_BATCH`` etc. are honoured by boto3).

Jobs keep their request and progress under a state prefix next to their output,
``s3://<output bucket>/selfmaker-jobs/<training|transform>/<job name>/``, which the job role may write.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from batch import awsbatch, storage
from batch.errors import BatchError
from batch.request import parse_request
from training.images import classify_image
from training.runner import TrainingRequestError, check_request
from training.storage import Storage, StorageError
from training.trainer import NO_PROGRAM

TAG_CAPACITY = "selfmaker:capacity"
TAG_ACCELERATOR = "selfmaker:accelerator"
TAG_SPOT_QUEUE = "selfmaker:spot-queue"
TAG_DEFINITION = {
    "train": "selfmaker:train-definition",
    "train-multinode": "selfmaker:train-multinode-definition",
    "transform": "selfmaker:transform-definition",
}
TAG_KIND = "selfmaker:kind"
TAG_STATE = "selfmaker:state"
STATE_PREFIX = "selfmaker-jobs"
#: AWS Batch refuses shorter job timeouts
MIN_TIMEOUT_SECONDS = 60
#: Batch's array jobs hold 2..10,000 children
MAX_ARRAY_SIZE = 10_000
ACTIVE_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
FINAL_STATUSES = ("SUCCEEDED", "FAILED")
_ECR_IMAGE = re.compile(
    r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+):([A-Za-z0-9_][A-Za-z0-9_.-]*)$"
)
_SIZES = {"medium": 1, "large": 2, "xlarge": 4}
#: GiB of memory per vCPU by instance family letter (c: compute, m: general, r: memory, ...)
_GIB_PER_VCPU = {"c": 2, "m": 4, "r": 8, "x": 16, "t": 4, "g": 4, "p": 8, "i": 8, "z": 8}


class AwsBatchError(Exception):
    """A submission cannot go ahead; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class Queue:
    """A job queue of a ``selfmaker:jobs`` stack and the job definitions it runs."""

    name: str
    arn: str
    capacity: str
    spot_queue: str | None
    definitions: dict[str, str]
    accelerator: str = "cpu"


@dataclass(frozen=True)
class Resources:
    """What one SageMaker instance type asks of a Batch node: vCPUs, memory (MiB), GPUs."""

    vcpus: int
    memory_mib: int
    gpus: int = 0

    def requirements(self) -> list[dict[str, str]]:
        """As Batch ``resourceRequirements``."""
        out = [{"type": "VCPU", "value": str(self.vcpus)}, {"type": "MEMORY", "value": str(self.memory_mib)}]
        if self.gpus:
            out.append({"type": "GPU", "value": str(self.gpus)})
        return out


def instance_resources(instance_type: str) -> Resources:
    """The vCPUs, memory and GPUs of a SageMaker ``ml.*`` instance type, for the Batch job's overrides.

    Memory is about 90 % of the instance's, so the job fits beside the ECS agent on an instance of that size.
    """
    match = re.fullmatch(r"ml\.([a-z]+)(\d+)([a-z-]*)\.(\d*)(medium|large|xlarge)", instance_type)
    if not match:
        raise AwsBatchError(
            f"ResourceConfig.InstanceType {instance_type!r} is not an ml.<family>.<size> type"
        )
    family, generation, _, multiplier, size = match.groups()
    vcpus = _SIZES[size] * (int(multiplier) if multiplier else 1)
    gib = _GIB_PER_VCPU.get(family[0], 4) * vcpus
    gpus = 0
    if family in {"g", "p"} or family.startswith(("g", "p")):
        # g4dn/g5/g6 and p3 up to 8xlarge carry one GPU per instance, bigger ones one per 12 or 8 vCPUs
        gpus = 1 if vcpus <= 32 else max(1, vcpus // 12) if family.startswith("g") else max(1, vcpus // 8)
        if family == "p" and generation == "3":
            gpus = max(1, vcpus // 8)
    return Resources(vcpus=vcpus, memory_mib=int(gib * 1024 * 0.9), gpus=gpus)


def state_uri(output_path: str, kind: str, job_name: str) -> str:
    """The job's state prefix in its output bucket."""
    if not output_path.startswith("s3://"):
        raise AwsBatchError(f"the output path {output_path!r} must be an s3:// URI for a job on AWS Batch")
    bucket = output_path[len("s3://") :].split("/", 1)[0]
    return f"s3://{bucket}/{STATE_PREFIX}/{kind}/{job_name}/"


def _client_error(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', exc)}"


def child_index(child: dict[str, Any]) -> int:
    """The array index or node index of a child job (``<parent id>:<index>`` / ``<parent id>#<index>``)."""
    props = child.get("arrayProperties") or {}
    if props.get("index") is not None:
        return int(props["index"])
    node = (child.get("nodeDetails") or {}).get("nodeIndex")
    if node is not None:
        return int(node)
    match = re.search(r"[:#](\d+)$", str(child.get("jobId") or ""))
    return int(match.group(1)) if match else 0


class BatchJobs:
    """The AWS side of ``--aws-batch``: queues, job definitions, images, submission, status and logs."""

    def __init__(self, session: Any = None) -> None:

        self.session = session or boto3.session.Session()
        if not self.session.region_name:
            raise AwsBatchError("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION) or a profile's region")
        self.region = self.session.region_name
        self.batch = self.session.client("batch")
        self._logs: Any = None
        self._ecr: Any = None

    @property
    def logs(self) -> Any:
        """CloudWatch Logs client."""
        if self._logs is None:
            self._logs = self.session.client("logs")
        return self._logs

    @property
    def ecr(self) -> Any:
        """ECR client."""
        if self._ecr is None:
            self._ecr = self.session.client("ecr")
        return self._ecr

    # -- queues and definitions -----------------------------------------------------------------------

    def queue(self, name_or_arn: str) -> Queue:
        """The queue called ``name_or_arn`` (AwsBatchError naming it when there is none)."""

        try:
            found = self.batch.describe_job_queues(jobQueues=[name_or_arn]).get("jobQueues", [])
        except (ClientError, BotoCoreError) as exc:
            raise AwsBatchError(f"cannot look up job queue {name_or_arn!r}: {_client_error(exc)}") from None
        if not found:
            raise AwsBatchError(f"unknown job queue {name_or_arn!r} in {self.region}")
        q = found[0]
        tags = dict(q.get("tags") or {})
        if not tags and q.get("jobQueueArn"):
            tags = dict(self.batch.list_tags_for_resource(resourceArn=q["jobQueueArn"]).get("tags") or {})
        definitions = {kind: tags[tag] for kind, tag in TAG_DEFINITION.items() if tags.get(tag)}
        if not definitions:
            raise AwsBatchError(
                f"job queue {q['jobQueueName']!r} is not a selfmaker queue (no {TAG_DEFINITION['train']} "
                "tags; create it with the selfmaker:jobs stack config)"
            )
        if q.get("state") != "ENABLED":
            raise AwsBatchError(f"job queue {q['jobQueueName']!r} is {q.get('state', 'not enabled')}")
        return Queue(
            name=q["jobQueueName"],
            arn=q["jobQueueArn"],
            capacity=tags.get(TAG_CAPACITY, "on-demand"),
            spot_queue=tags.get(TAG_SPOT_QUEUE) or None,
            definitions=definitions,
            accelerator=tags.get(TAG_ACCELERATOR, "cpu"),
        )

    def spot_queue(self, queue: Queue) -> Queue:
        """The spot queue for ``queue`` (itself when it is one)."""
        if queue.capacity == "spot":
            return queue
        if not queue.spot_queue:
            raise AwsBatchError(
                f"EnableManagedSpotTraining needs a spot queue, and job queue {queue.name!r} names none "
                f"({TAG_SPOT_QUEUE}); submit to a spot queue or turn spot off"
            )
        return self.queue(queue.spot_queue)

    def definition(self, queue: Queue, kind: str) -> dict[str, Any]:
        """The latest active revision of the queue's ``kind`` job definition."""
        name = queue.definitions.get(kind)
        if not name:
            raise AwsBatchError(
                f"job queue {queue.name!r} has no {kind} job definition ({TAG_DEFINITION[kind]})"
            )
        found = self.batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE").get(
            "jobDefinitions", []
        )
        if not found:
            raise AwsBatchError(
                f"job definition {name!r} of queue {queue.name!r} does not exist in {self.region}"
            )
        return max(found, key=lambda d: int(d.get("revision", 0)))

    def check_image(self, definition: dict[str, Any]) -> str:
        """The definition's image; an ECR image whose tag is not pushed is an AwsBatchError naming it."""

        container = definition.get("containerProperties") or {}
        if not container:
            for group in (definition.get("nodeProperties") or {}).get("nodeRangeProperties", []):
                container = group.get("container") or {}
                if container:
                    break
        image = str(container.get("image") or "")
        match = _ECR_IMAGE.match(image)
        if not match:
            return image
        account, _, repository, tag = match.groups()
        try:
            self.ecr.describe_images(
                registryId=account, repositoryName=repository, imageIds=[{"imageTag": tag}]
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"ImageNotFoundException", "RepositoryNotFoundException"}:
                raise AwsBatchError(
                    f"image {image} is not in ECR (push tag {tag!r} to {repository}, or set the stack's "
                    "imageTag to a pushed one)"
                ) from None
            raise AwsBatchError(f"cannot check image {image}: {_client_error(exc)}") from None
        return image

    # -- submission and state -------------------------------------------------------------------------

    def submit(self, **params: Any) -> dict[str, Any]:
        """``SubmitJob`` with ``params``; an AWS refusal is an AwsBatchError."""

        try:
            return dict(self.batch.submit_job(**params))
        except (ClientError, BotoCoreError) as exc:
            raise AwsBatchError(f"AWS Batch refused the job: {_client_error(exc)}") from None

    def describe(self, job_id: str) -> dict[str, Any]:
        """The job's description (AwsBatchError when Batch does not know it)."""
        found = self.batch.describe_jobs(jobs=[job_id]).get("jobs", [])
        if not found:
            raise AwsBatchError(
                f"unknown AWS Batch job {job_id!r} in {self.region} (pass the job id it was submitted as)"
            )
        return dict(found[0])

    def describe_all(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The descriptions of ``job_ids`` (those Batch still knows), in batches of DescribeJobs' 100."""
        described: list[dict[str, Any]] = []
        for start in range(0, len(job_ids), 100):
            described += self.batch.describe_jobs(jobs=list(job_ids[start : start + 100])).get("jobs", [])
        return described

    def children(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """The described children of an array job or the nodes of a multi-node job (else the job itself)."""
        if job.get("arrayProperties", {}).get("size"):
            key = {"arrayJobId": job["jobId"]}
        elif job.get("nodeProperties") or job.get("nodeDetails"):
            key = {"multiNodeJobId": job["jobId"]}
        else:
            return [job]
        ids: list[str] = []
        for status in (*ACTIVE_STATUSES, *FINAL_STATUSES):
            for page in self.batch.get_paginator("list_jobs").paginate(jobStatus=status, **key):
                ids += [j["jobId"] for j in page.get("jobSummaryList", [])]
        return sorted(self.describe_all(ids), key=child_index) or [job]

    def jobs(self, queue: Queue, statuses: Sequence[str]) -> list[dict[str, Any]]:
        """Summaries of the queue's jobs in ``statuses`` (newest first)."""
        out: list[dict[str, Any]] = []
        for status in statuses:
            for page in self.batch.get_paginator("list_jobs").paginate(jobQueue=queue.arn, jobStatus=status):
                # the jobs themselves: array children (<id>:<n>) and nodes (<id>#<n>) belong to them
                out += [
                    j
                    for j in page.get("jobSummaryList", [])
                    if not re.search(r"[:#]\d+$", str(j.get("jobId", "")))
                ]
        return sorted(out, key=lambda j: int(j.get("createdAt") or 0), reverse=True)

    # -- logs -----------------------------------------------------------------------------------------

    def log_group(self, job: dict[str, Any]) -> str:
        """The CloudWatch log group the job's containers write to (the definition's awslogs group)."""
        # a multi-node job's containers are in its node ranges (a DescribeJobDefinitions of moto's omits them)
        containers = [
            job.get("container") or {},
            *(
                (r.get("container") or {})
                for r in (job.get("nodeProperties") or {}).get("nodeRangeProperties") or []
            ),
        ]
        for container in containers:
            options = (container.get("logConfiguration") or {}).get("options") or {}
            if options.get("awslogs-group"):
                return str(options["awslogs-group"])
        definition = job.get("jobDefinition")
        if definition:
            found = self.batch.describe_job_definitions(jobDefinitions=[definition]).get("jobDefinitions", [])
            for d in found:
                props: dict[str, Any] | None = d.get("containerProperties") or next(
                    (
                        g.get("container")
                        for g in (d.get("nodeProperties") or {}).get("nodeRangeProperties", [])
                    ),
                    {},
                )
                options = ((props or {}).get("logConfiguration") or {}).get("options") or {}
                if options.get("awslogs-group"):
                    return str(options["awslogs-group"])
        return "/aws/batch/job"

    @staticmethod
    def log_stream(job: dict[str, Any]) -> str | None:
        """The log stream of the job's latest attempt."""
        stream = (job.get("container") or {}).get("logStreamName")
        if stream:
            return str(stream)
        for attempt in reversed(job.get("attempts") or []):
            stream = (attempt.get("container") or {}).get("logStreamName")
            if stream:
                return str(stream)
        return None

    def log_events(self, group: str, stream: str) -> Iterator[str]:
        """Every message of one log stream, oldest first."""

        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
            if token:
                kwargs["nextToken"] = token
            try:
                page = self.logs.get_log_events(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException" and token is None:
                    # Batch names the stream before the container writes to it (or if it never started)
                    return
                raise AwsBatchError(
                    f"cannot read log stream {group} {stream}: {_client_error(exc)}"
                ) from None
            for event in page.get("events", []):
                yield str(event.get("message", ""))
            if not page.get("events") or page.get("nextForwardToken") in (None, token):
                return
            token = page.get("nextForwardToken")


# --- transform -------------------------------------------------------------------------------------------


@dataclass
class Submitted:
    """A submitted job: its id and what the command prints about it."""

    job_id: str
    job_name: str
    queue: str
    shares: int = 1
    state: str = ""
    outputs: str = ""
    nothing_to_do: bool = False
    params: dict[str, Any] = field(default_factory=dict)


def definition_vcpus(definition: dict[str, Any]) -> int:
    """vCPUs one container of the definition asks for."""
    container = definition.get("containerProperties") or {}
    for req in container.get("resourceRequirements") or []:
        if req.get("type") == "VCPU":
            return max(1, int(float(req["value"])))
    return max(1, int(container.get("vcpus") or 1))


def submit_transform(
    jobs: BatchJobs,
    request: dict[str, Any],
    queue_name: str,
    *,
    model: str,
    model_environment: dict[str, str],
    children: int | None = None,
    part_mb: float = 32.0,
    state: str | None = None,
) -> Submitted:
    """Plan a CreateTransformJob request into shares and submit them as one array job.

    Raises :class:`batch.errors.TransformRequestError` for a request the local command refuses,
    :class:`batch.errors.InputError` when the input has no objects and :class:`AwsBatchError` for the queue,
    definition or image. Shares whose outputs exist are not submitted again.
    """

    spec = parse_request(request)  # the local command's checks and messages, before anything else
    for what, uri in (
        ("TransformInput.DataSource.S3DataSource.S3Uri", spec.input_uri),
        ("TransformOutput.S3OutputPath", spec.output_path),
    ):
        if not uri.startswith("s3://"):
            raise AwsBatchError(f"{what} {uri!r} must be an s3:// URI for a job on AWS Batch")
    if not model.startswith("s3://"):
        raise AwsBatchError(f"the model data {model!r} must be in S3 (s3://...) for a job on AWS Batch")
    queue = jobs.queue(queue_name)
    definition = jobs.definition(queue, "transform")
    jobs.check_image(definition)
    count = children or int((request.get("TransformResources") or {}).get("InstanceCount") or 1)
    if not 1 <= count <= MAX_ARRAY_SIZE:
        raise AwsBatchError(f"--children must be 1..{MAX_ARRAY_SIZE}, got {count}")
    state = state or state_uri(spec.output_path, "transform", spec.job_name)
    prepared = awsbatch.prepare(
        request,
        model=model,
        model_environment=model_environment,
        state=state,
        children=count,
        part_bytes=int(part_mb * 1024 * 1024),
        cores_per_child=definition_vcpus(definition),
    )
    submitted = Submitted(
        job_id="",
        job_name=spec.job_name,
        queue=queue.name,
        shares=len(prepared.shares),
        state=state,
        outputs=spec.output_path,
    )
    if not prepared.shares:
        submitted.nothing_to_do = True
        return submitted
    params: dict[str, Any] = {
        "jobName": _job_name(spec.job_name),
        "jobQueue": queue.arn,
        "jobDefinition": f"{definition['jobDefinitionName']}:{definition['revision']}",
        "parameters": {"state": state},
        "tags": {TAG_KIND: "transform", TAG_STATE: state},
        "propagateTags": True,
    }
    if len(prepared.shares) > 1:
        params["arrayProperties"] = {"size": len(prepared.shares)}
    submitted.params = params
    submitted.job_id = str(jobs.submit(**params)["jobId"])
    return submitted


def _job_name(name: str) -> str:
    """A Batch job name (128 of [A-Za-z0-9_-], starting alphanumeric) for a SageMaker job name."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:128]
    return cleaned if cleaned[:1].isalnum() else f"j{cleaned[:127]}"


# --- training --------------------------------------------------------------------------------------------


def check_training_request(request: Any) -> None:
    """Refuse, with the local commands' messages, a CreateTrainingJob request they would refuse (the command
    also checks it against botocore's shape, as ``selfmaker up`` does) or that cannot run on AWS Batch."""
    if not isinstance(request, dict) or not request.get("TrainingJobName"):
        raise AwsBatchError("the request must be a JSON object with TrainingJobName")
    try:
        count = int((request.get("ResourceConfig") or {}).get("InstanceCount") or 1)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise AwsBatchError("ResourceConfig.InstanceCount must be at least 1")  # the runner's words
    for i, channel in enumerate(request.get("InputDataConfig") or []):
        uri = str(((channel.get("DataSource") or {}).get("S3DataSource") or {}).get("S3Uri") or "")
        if not uri.startswith("s3://"):
            raise AwsBatchError(
                f"InputDataConfig[{i}].DataSource.S3DataSource.S3Uri {uri!r} must be an s3:// URI "
                "for a job on AWS Batch"
            )
    checkpoint = str((request.get("CheckpointConfig") or {}).get("S3Uri") or "")
    if checkpoint and not checkpoint.startswith("s3://"):
        raise AwsBatchError(
            f"CheckpointConfig.S3Uri {checkpoint!r} must be an s3:// URI for a job on AWS Batch"
        )
    try:
        check_request(request)  # what the runner would fail the job with once it started
    except TrainingRequestError as exc:
        raise AwsBatchError(str(exc)) from None
    algorithm = request.get("AlgorithmSpecification") or {}
    image = str(algorithm.get("TrainingImage") or algorithm.get("AlgorithmName") or "")
    kind = classify_image(image)
    if kind == "container":  # the job runs the stack's image, which has no container engine inside
        raise AwsBatchError(
            f"AlgorithmSpecification.TrainingImage {image!r} is not one the stack's image runs "
            "(selfmaker script mode or a built-in algorithm: xgboost, linear-learner, kmeans, pca, "
            "factorization-machines): AWS Batch jobs run the stack's image"
        )
    environment = request.get("Environment") or {}
    if (
        kind == "script"
        and "sagemaker_program" not in (request.get("HyperParameters") or {})
        and not (isinstance(environment, dict) and environment.get("SAGEMAKER_PROGRAM"))
    ):
        raise AwsBatchError(NO_PROGRAM)  # the trainer's words, before a job starts only to fail


def check_channels(request: dict[str, Any]) -> None:
    """Every S3Prefix channel must hold objects (one line naming the first that does not)."""

    storage = Storage(None)
    for channel in request.get("InputDataConfig") or []:
        source = (channel.get("DataSource") or {}).get("S3DataSource") or {}
        if str(source.get("S3DataType") or "S3Prefix") != "S3Prefix":
            continue
        try:
            refs = storage.list(str(source["S3Uri"]))
        except StorageError as exc:
            raise AwsBatchError(f"channel {channel.get('ChannelName')!r}: {exc}") from None
        if not refs:
            raise AwsBatchError(f"channel {channel.get('ChannelName')!r}: no objects under {source['S3Uri']}")


def submit_training(jobs: BatchJobs, request: dict[str, Any], queue_name: str) -> Submitted:
    """Submit a CreateTrainingJob request: one node, or a multi-node job for InstanceCount > 1; spot when
    the request enables managed spot training. The request is stored in the job's state prefix."""

    check_training_request(request)
    job_name = str(request["TrainingJobName"])
    output_path = str((request.get("OutputDataConfig") or {}).get("S3OutputPath") or "")
    state = state_uri(output_path, "training", job_name)
    resources = request.get("ResourceConfig") or {}
    count = int(resources.get("InstanceCount") or 1)
    need = instance_resources(str(resources.get("InstanceType") or "ml.m5.large"))
    if request.get("EnableManagedSpotTraining") and count > 1:
        raise AwsBatchError(
            "AWS Batch runs no multi-node job on spot instances: set EnableManagedSpotTraining to "
            "false or ResourceConfig.InstanceCount to 1"
        )
    queue = jobs.queue(queue_name)
    if request.get("EnableManagedSpotTraining"):
        queue = jobs.spot_queue(queue)
    if need.gpus and queue.accelerator != "gpu":
        raise AwsBatchError(
            f"ResourceConfig.InstanceType {resources.get('InstanceType')} has GPUs and job queue "
            f"{queue.name!r} runs CPU instances; submit to a GPU queue"
        )
    kind = "train-multinode" if count > 1 else "train"
    definition = jobs.definition(queue, kind)
    jobs.check_image(definition)
    check_channels(request)
    max_runtime = int((request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds") or 86400)
    try:
        storage.put_bytes(storage.join_uri(state, "request.json"), json.dumps(request).encode())
    except BatchError as exc:
        raise AwsBatchError(f"cannot store the request at {state}: {exc}") from None
    overrides = {"resourceRequirements": need.requirements()}
    params: dict[str, Any] = {
        "jobName": _job_name(job_name),
        "jobQueue": queue.arn,
        "jobDefinition": f"{definition['jobDefinitionName']}:{definition['revision']}",
        "parameters": {"state": state},
        # MaxRuntimeInSeconds bounds the job as SageMaker does (Batch then sends SIGTERM, SIGKILL)
        "timeout": {"attemptDurationSeconds": max(MIN_TIMEOUT_SECONDS, max_runtime)},
        "tags": {TAG_KIND: "training", TAG_STATE: state},
        "propagateTags": True,
    }
    if count > 1:
        params["nodeOverrides"] = {
            "numNodes": count,
            "nodePropertyOverrides": [{"targetNodes": f"0:{count - 1}", "containerOverrides": overrides}],
        }
    else:
        params["containerOverrides"] = overrides
    submitted = Submitted(
        job_id="",
        job_name=job_name,
        queue=queue.name,
        state=state,
        outputs=f"{output_path.rstrip('/')}/{job_name}/output/model.tar.gz",
        params=params,
    )
    submitted.job_id = str(jobs.submit(**params)["jobId"])
    return submitted


# --- waiting ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a watched job ended: ``failed`` names the failed share / node and its log stream."""

    status: str
    failed: list[str] = field(default_factory=list)


def failures(jobs: BatchJobs, job: dict[str, Any], unit: str) -> list[str]:
    """One line per failed child: which share / node, why, and its log stream."""
    group = jobs.log_group(job)
    lines = []
    for child in jobs.children(job):
        if child.get("status") != "FAILED":
            continue
        index = child_index(child)
        stream = jobs.log_stream(child)
        where = f"log stream {group} {stream}" if stream else "no log stream (it never started)"
        lines.append(
            f"{unit} {index} failed ({child.get('jobId')}): "
            f"{child.get('statusReason') or 'no reason given'}; "
            f"{where}"
        )
    if not lines and job.get("status") == "FAILED":
        lines.append(f"job {job.get('jobId')} failed: {job.get('statusReason') or 'no reason given'}")
    return lines


def watch(
    jobs: BatchJobs,
    job_id: str,
    *,
    unit: str,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
    interval: float = 5.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Poll the job until it succeeds or fails (or ``timeout`` seconds pass: status ``TIMEOUT``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = jobs.describe(job_id)
        if on_poll is not None:
            on_poll(job)
        status = str(job.get("status"))
        if status == "SUCCEEDED":
            return Outcome(status)
        if status == "FAILED":
            return Outcome(status, failures(jobs, job, unit))
        if deadline is not None and time.monotonic() > deadline:
            return Outcome("TIMEOUT")
        sleep(interval)


def array_counts(job: dict[str, Any]) -> tuple[int, int, int]:
    """(children done, failed, total) of an array job (a plain job counts as one child)."""
    props = job.get("arrayProperties") or {}
    total = int(props.get("size") or 0)
    if not total:
        status = job.get("status")
        return (1 if status == "SUCCEEDED" else 0), (1 if status == "FAILED" else 0), 1
    summary = props.get("statusSummary") or {}
    return int(summary.get("SUCCEEDED", 0)), int(summary.get("FAILED", 0)), total


def progress_line(job: dict[str, Any], records: int, elapsed: float, width: int = 24) -> str:
    """``[####....] children 2/3 done  12,345 rows  2,100 rows/s  RUNNING``."""
    done, failed, total = array_counts(job)
    filled = int(width * done / total) if total else 0
    rate = records / elapsed if elapsed > 0 else 0.0
    extra = f"  {failed} failed" if failed else ""
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] children {done}/{total} done{extra}  {records:,} rows  "
        f"{rate:,.0f} rows/s  {job.get('status')}"
    )


__all__ = [
    "AwsBatchError",
    "BatchJobs",
    "Queue",
    "Resources",
    "Submitted",
    "instance_resources",
    "submit_training",
    "submit_transform",
    "watch",
]
