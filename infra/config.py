"""The typed stack configuration, built once from ``pulumi.Config()`` and validated eagerly.

Every error names the offending key the way it is written in ``Pulumi.<stack>.yaml``
(``selfmaker:groups[1].spotPercentage``), so a bad stack file fails before anything is planned.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra import cidr, endpoints, naming, presets, userdata

NAMESPACE = "selfmaker"

#: Top-level keys (camelCase, as in the stack file) and their defaults; ``...`` = required.
DEFAULTS: dict[str, Any] = {
    "vpcCidr": "10.0.0.0/16",
    "azCount": 2,
    "natGateways": "single",
    "interfaceEndpoints": True,
    "flowLogs": True,
    "flowLogsRetentionDays": 90,
    "encryption": "kms",
    "modelPrefix": "models/",
    "outputsExpirationDays": 90,
    "noncurrentVersionDays": 30,
    "forceDestroy": False,
    "keepImages": 20,
    "imageTag": ...,
    "logRetentionDays": 30,
    "ssmAccess": True,
    "tags": {},
    "groups": [],
    "endpoints": [],
    "gateway": {},
    "jobs": None,
}
OBJECT_KEYS = frozenset({"tags", "groups", "endpoints", "gateway", "jobs"})
NAT_MODES = ("single", "per-az")
ENCRYPTIONS = ("kms", "s3")
ROLES = ("serve",)
#: training instance groups were replaced by AWS Batch (``selfmaker:jobs``); the message says where to go
TRAIN_GROUP_MOVED = (
    "training groups are replaced by AWS Batch job queues: move the instance types to "
    "selfmaker:jobs.environments and submit jobs with `selfmaker train REQUEST.json --aws-batch "
    "QUEUE` (docs/infra.md)"
)
WARM_POOL_STATES = ("Stopped", "Running", "Hibernated")
#: CloudWatch Logs accepts only these retention values.
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
SSM_AMI = {
    "cpu": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "gpu": "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id",
}
DEFAULT_ROOT_GB = {"cpu": 40, "gpu": 100}
GROUP_KEYS = frozenset(
    {
        "name",
        "role",
        "accelerator",
        "preset",
        "instanceTypes",
        "minSize",
        "maxSize",
        "desiredCapacity",
        "onDemandBase",
        "spotPercentage",
        "capacityRebalance",
        "warmPool",
        "amiId",
        "amiParameter",
        "rootVolumeGb",
        "imageTag",
        "modelKey",
        "environment",
        "port",
    }
)
JOBS_KEYS = frozenset({"environments", "retryAttempts"})
JOB_ENV_KEYS = frozenset(
    {
        "name",
        "accelerator",
        "preset",
        "instanceTypes",
        "maxVcpus",
        "onDemand",
        "spot",
        "priority",
        "vcpus",
        "memoryMib",
        "gpus",
        "rootVolumeGb",
        "imageTag",
    }
)
#: default vCPUs / memory (MiB) / GPUs of one job container, sized to fit the presets' smallest types
JOB_DEFAULTS = {"cpu": (4, 7000, 0), "gpu": (4, 14000, 1)}


class ConfigError(ValueError):
    """A stack-config value is missing or wrong; ``field`` is the full key (``selfmaker:azCount``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class NetworkConfig:
    """VPC layout: CIDR, AZ count, NAT mode, endpoints and flow logs."""

    vpc_cidr: str
    az_count: int
    nat_gateways: str
    interface_endpoints: bool
    flow_logs: bool
    flow_logs_retention_days: int


@dataclass(frozen=True)
class StorageConfig:
    """Buckets: encryption kind, model prefix and lifecycle."""

    encryption: str
    model_prefix: str
    outputs_expiration_days: int
    noncurrent_version_days: int
    force_destroy: bool


@dataclass(frozen=True)
class WarmPoolConfig:
    """An Auto Scaling warm pool (pre-initialised stopped or running instances)."""

    min_size: int
    max_prepared_capacity: int | None
    state: str


@dataclass(frozen=True)
class GroupConfig:
    """One instance group of model servers: on what (CPU/GPU types) and how many (training and transform
    jobs run on AWS Batch, :class:`JobsConfig`)."""

    name: str
    role: str
    accelerator: str
    instance_types: tuple[str, ...]
    min_size: int
    max_size: int
    desired_capacity: int
    on_demand_base: int
    spot_percentage: int
    capacity_rebalance: bool
    warm_pool: WarmPoolConfig | None
    ami_id: str | None
    ami_parameter: str
    root_volume_gb: int
    image_tag: str
    port: int = 8080
    model_key: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScalingConfig:
    """Target tracking of one variant (SageMaker's SageMakerVariantInvocationsPerInstance, per minute)."""

    min_instances: int
    max_instances: int
    invocations_per_instance: int


@dataclass(frozen=True)
class ServerlessVariantConfig:
    """What serves a serverless variant: a Lambda function from the stack's image (SageMaker's
    ServerlessConfig: MemorySizeInMB, MaxConcurrency, ProvisionedConcurrency)."""

    model_key: str
    image_tag: str
    memory_size_in_mb: int
    max_concurrency: int
    provisioned_concurrency: int | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: int = 60
    ephemeral_storage_in_mb: int = 1024
    multi_value_headers: bool = False


@dataclass(frozen=True)
class VariantConfig:
    """One production variant. ``kind`` says what serves it: ``instance`` = an Auto Scaling group.

    Issue #21 adds kinds (``serverless``, ...) with their own fields; :data:`VARIANT_PARSERS` is where a
    kind is chosen and parsed.
    """

    name: str
    kind: str
    weight: float
    initial_instance_count: int = 0
    group: GroupConfig | None = None
    scaling: ScalingConfig | None = None
    serverless: ServerlessVariantConfig | None = None


@dataclass(frozen=True)
class RolloutConfig:
    """How a changed model or image replaces a variant's instances (SageMaker's blue/green traffic
    routing)."""

    strategy: str = "canary"
    canary_percent: int = 10
    linear_step_percent: int = 25
    wait_seconds: int = 300

    def checkpoints(self) -> list[int]:
        """Instance-refresh checkpoint percentages (see :func:`infra.endpoints.checkpoints`)."""
        return endpoints.checkpoints(
            self.strategy, canary_percent=self.canary_percent, linear_step_percent=self.linear_step_percent
        )


@dataclass(frozen=True)
class AlarmsConfig:
    """Thresholds of the per-variant alarms that stop and roll back a rollout."""

    target_5xx_per_minute: int = 5
    p99_latency_ms: int = 2000
    evaluation_minutes: int = 2


@dataclass(frozen=True)
class AsyncConfig:
    """SageMaker's AsyncInferenceConfig of an endpoint, on SQS: where inputs may come from and results go
    (key prefixes: inputs in the data bucket, results and worker state in the outputs bucket), its SNS
    topics (None: created by the stack) and how its worker group scales on backlog."""

    max_concurrent_invocations_per_instance: int
    output_prefix: str
    failure_prefix: str
    state_prefix: str
    input_prefix: str
    success_topic_arn: str | None = None
    error_topic_arn: str | None = None
    include_inference_response_in: tuple[str, ...] = ()
    backlog_per_instance: float = 1.0
    idle_minutes: int = 15


@dataclass(frozen=True)
class EndpointConfig:
    """One endpoint behind the gateway: ``kind`` is ``realtime``, ``serverless`` or ``async`` (then
    ``async_inference`` holds its AsyncInferenceConfig)."""

    name: str
    kind: str
    variants: tuple[VariantConfig, ...]
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    async_inference: AsyncConfig | None = None


@dataclass(frozen=True)
class GatewayConfig:
    """The stack's one Application Load Balancer in front of every endpoint."""

    scheme: str = "internal"
    certificate_arn: str | None = None
    ssl_policy: str = "ELBSecurityPolicy-TLS13-1-2-2021-06"
    allowed_cidrs: tuple[str, ...] = ()
    trust_store_ca_bundle: str | None = None
    idle_timeout: int = 60
    deletion_protection: bool = False
    access_logs: bool = True


@dataclass(frozen=True)
class JobEnvironmentConfig:
    """One kind of machine for AWS Batch jobs: its compute environments (on-demand and/or spot), their
    queues ``<prefix>-<name>`` / ``<prefix>-<name>-spot`` and the size of one job's container."""

    name: str
    accelerator: str
    instance_types: tuple[str, ...]
    max_vcpus: int
    on_demand: bool
    spot: bool
    priority: int
    vcpus: int
    memory_mib: int
    gpus: int
    root_volume_gb: int
    image_tag: str


@dataclass(frozen=True)
class JobsConfig:
    """Training and transform jobs on AWS Batch (``selfmaker:jobs``)."""

    environments: tuple[JobEnvironmentConfig, ...]
    retry_attempts: int = 3


@dataclass(frozen=True)
class StackConfig:
    """Everything the program needs, typed and validated."""

    project: str
    stack: str
    prefix: str
    tags: Mapping[str, str]
    network: NetworkConfig
    storage: StorageConfig
    keep_images: int
    image_tag: str
    log_retention_days: int
    ssm_access: bool
    groups: tuple[GroupConfig, ...]
    endpoints: tuple[EndpointConfig, ...] = ()
    gateway: GatewayConfig | None = None
    jobs: JobsConfig | None = None


# --- coercion helpers (stack files hand scalars over as strings) ------------------------------------


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


def _int(field_name: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(field_name, f"expected an integer, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        raise ConfigError(field_name, f"expected an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(field_name, f"must be >= {lo} (got {value})")
    if hi is not None and value > hi:
        raise ConfigError(field_name, f"must be <= {hi} (got {value})")
    return value


def _bool(field_name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise ConfigError(field_name, f"expected true or false, got {value!r}")


def _str(field_name: str, value: Any, *, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field_name, f"expected a non-empty string, got {value!r}")
    value = value.strip()
    if choices is not None and value not in choices:
        raise ConfigError(field_name, f"must be one of {list(choices)}, got {value!r}")
    return value


def _instance_types(raw: Mapping[str, Any], f: Callable[[str], str], accelerator: str) -> tuple[str, ...]:
    """``instanceTypes`` (a list) or ``preset`` of a group or compute environment, for ``accelerator``."""
    types_raw = raw.get("instanceTypes")
    if types_raw is not None and (
        not isinstance(types_raw, list) or not all(isinstance(t, str) for t in types_raw)
    ):
        raise ConfigError(f("instanceTypes"), "expected a list of instance types")
    try:
        return presets.resolve_instance_types(accelerator, raw.get("preset"), types_raw)
    except ValueError as exc:
        raise ConfigError(f("instanceTypes" if types_raw else "preset"), str(exc)) from None


def _str_map(field_name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(field_name, f"expected a mapping, got {type(value).__name__}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, (Mapping, list)) or item is None:
            raise ConfigError(f"{field_name}.{key}", "expected a string (or number) value")
        out[key] = str(item).lower() if isinstance(item, bool) else str(item)
    return out


def _retention(field_name: str, value: Any) -> int:
    days = _int(field_name, value)
    if days not in LOG_RETENTION_DAYS:
        raise ConfigError(field_name, f"CloudWatch accepts only {list(LOG_RETENTION_DAYS)}, got {days}")
    return days


# --- sections ---------------------------------------------------------------------------------------


def _network(raw: Mapping[str, Any]) -> NetworkConfig:
    vpc_cidr = _str(_key("vpcCidr"), raw["vpcCidr"])
    az_count = _int(_key("azCount"), raw["azCount"], lo=2, hi=6)
    try:
        cidr.plan_subnets(vpc_cidr, az_count)
    except ValueError as exc:
        raise ConfigError(_key("vpcCidr"), str(exc)) from None
    if not ipaddress.IPv4Network(vpc_cidr).is_private:
        raise ConfigError(_key("vpcCidr"), f"{vpc_cidr} is not a private (RFC 1918) range")
    return NetworkConfig(
        vpc_cidr=vpc_cidr,
        az_count=az_count,
        nat_gateways=_str(_key("natGateways"), raw["natGateways"], choices=NAT_MODES),
        interface_endpoints=_bool(_key("interfaceEndpoints"), raw["interfaceEndpoints"]),
        flow_logs=_bool(_key("flowLogs"), raw["flowLogs"]),
        flow_logs_retention_days=_retention(_key("flowLogsRetentionDays"), raw["flowLogsRetentionDays"]),
    )


def _storage(raw: Mapping[str, Any]) -> StorageConfig:
    prefix = naming.normalize_key_prefix(_str(_key("modelPrefix"), raw["modelPrefix"]))
    if not prefix or not re.fullmatch(r"[A-Za-z0-9!_.*'()/-]+", prefix):
        raise ConfigError(_key("modelPrefix"), f"{raw['modelPrefix']!r} is not a usable S3 key prefix")
    return StorageConfig(
        encryption=_str(_key("encryption"), raw["encryption"], choices=ENCRYPTIONS),
        model_prefix=prefix,
        outputs_expiration_days=_int(_key("outputsExpirationDays"), raw["outputsExpirationDays"], lo=1),
        noncurrent_version_days=_int(_key("noncurrentVersionDays"), raw["noncurrentVersionDays"], lo=1),
        force_destroy=_bool(_key("forceDestroy"), raw["forceDestroy"]),
    )


def _warm_pool(field_name: str, value: Any) -> WarmPoolConfig | None:
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(field_name, "expected a mapping (minSize, maxPreparedCapacity, state) or true")
    unknown = set(value) - {"minSize", "maxPreparedCapacity", "state"}
    if unknown:
        raise ConfigError(f"{field_name}.{sorted(unknown)[0]}", "unknown key")
    max_prepared = value.get("maxPreparedCapacity")
    return WarmPoolConfig(
        min_size=_int(f"{field_name}.minSize", value.get("minSize", 0), lo=0),
        max_prepared_capacity=None
        if max_prepared is None
        else _int(f"{field_name}.maxPreparedCapacity", max_prepared, lo=0),
        state=_str(f"{field_name}.state", value.get("state", "Stopped"), choices=WARM_POOL_STATES),
    )


def _group(
    index: int,
    raw: Any,
    storage: StorageConfig,
    default_tag: str,
    *,
    base: str | None = None,
    name: str | None = None,
) -> GroupConfig:
    """One instance group; ``base``/``name`` are given when a variant reuses this parser (its keys are
    checked by the caller and its name follows SageMaker's rules instead)."""
    base = base or f"{_key('groups')}[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(base, "expected a mapping")
    unknown = set(raw) - GROUP_KEYS
    if unknown:
        raise ConfigError(f"{base}.{sorted(unknown)[0]}", f"unknown key (known: {sorted(GROUP_KEYS)})")

    def f(key: str) -> str:
        return f"{base}.{key}"

    if name is None:
        name = _str(f("name"), raw.get("name"))
        if not naming.valid_group_name(name):
            raise ConfigError(f("name"), f"{name!r}: use 2-32 characters [a-z0-9-], starting with a letter")
    if raw.get("role") == "train":
        raise ConfigError(f("role"), TRAIN_GROUP_MOVED)
    role = _str(f("role"), raw.get("role"), choices=ROLES)
    accelerator = _str(f("accelerator"), raw.get("accelerator", "cpu"), choices=presets.ACCELERATORS)

    instance_types = _instance_types(raw, f, accelerator)

    min_size = _int(f("minSize"), raw.get("minSize", 0), lo=0)
    max_size = _int(f("maxSize"), raw.get("maxSize", max(min_size, 1)), lo=1)
    if max_size < min_size:
        raise ConfigError(f("maxSize"), f"must be >= minSize ({min_size}), got {max_size}")
    desired = _int(f("desiredCapacity"), raw.get("desiredCapacity", min_size), lo=min_size, hi=max_size)
    on_demand_base = _int(f("onDemandBase"), raw.get("onDemandBase", 0), lo=0, hi=max_size)
    spot = _int(f("spotPercentage"), raw.get("spotPercentage", 0), lo=0, hi=100)
    rebalance = _bool(f("capacityRebalance"), raw.get("capacityRebalance", spot > 0))
    warm_pool = _warm_pool(f("warmPool"), raw.get("warmPool"))
    if warm_pool is not None:
        # AWS refuses warm pools on groups with a mixed instances policy (several types or spot).
        if spot > 0:
            raise ConfigError(
                f("warmPool"), "warm pools cannot be combined with spot (set spotPercentage to 0)"
            )
        if len(instance_types) != 1:
            raise ConfigError(
                f("warmPool"), "warm pools need exactly one instance type (set instanceTypes to one type)"
            )
        if warm_pool.max_prepared_capacity is not None and warm_pool.max_prepared_capacity < max_size:
            raise ConfigError(f("warmPool.maxPreparedCapacity"), f"must be >= maxSize ({max_size}) or unset")

    ami_id = raw.get("amiId")
    if ami_id is not None and not re.fullmatch(r"ami-[0-9a-f]{8,17}", str(ami_id)):
        raise ConfigError(f("amiId"), f"{ami_id!r} is not an AMI id (ami-...)")
    ami_parameter = raw.get("amiParameter", SSM_AMI[accelerator])
    if ami_id is not None and "amiParameter" in raw:
        raise ConfigError(f("amiParameter"), "set amiId or amiParameter, not both")
    if not isinstance(ami_parameter, str) or not ami_parameter.startswith("/"):
        raise ConfigError(f("amiParameter"), f"{ami_parameter!r} is not an SSM parameter name (/...)")

    root_gb = _int(f("rootVolumeGb"), raw.get("rootVolumeGb", DEFAULT_ROOT_GB[accelerator]), lo=8, hi=16384)
    # GPU groups run the GPU build of the image (`make images` builds selfmaker and selfmaker-gpu),
    # pushed under the same version with a "-gpu" suffix unless the group names its own tag.
    image_tag = _str(
        f("imageTag"), raw.get("imageTag", f"{default_tag}-gpu" if accelerator == "gpu" else default_tag)
    )
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", image_tag):
        raise ConfigError(f("imageTag"), f"{image_tag!r} is not a valid image tag")
    port = _int(f("port"), raw.get("port", 8080), lo=1024, hi=65535)
    environment = _str_map(f("environment"), raw.get("environment"))
    for key in environment:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f(f"environment.{key}"), "not a valid environment variable name")
        if key in userdata.RESERVED_ENV:
            raise ConfigError(f(f"environment.{key}"), "set by selfmaker from the stack's region and job")

    model_key = _model_key(f("modelKey"), raw.get("modelKey"), storage)

    return GroupConfig(
        name=name,
        role=role,
        accelerator=accelerator,
        instance_types=instance_types,
        min_size=min_size,
        max_size=max_size,
        desired_capacity=desired,
        on_demand_base=on_demand_base,
        spot_percentage=spot,
        capacity_rebalance=rebalance,
        warm_pool=warm_pool,
        ami_id=ami_id,
        ami_parameter=ami_parameter,
        root_volume_gb=root_gb,
        image_tag=image_tag,
        port=port,
        model_key=model_key,
        environment=environment,
    )


def _job_environment(index: int, raw: Any, default_tag: str) -> JobEnvironmentConfig:
    base = f"{_key('jobs')}.environments[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(base, "expected a mapping")
    unknown = set(raw) - JOB_ENV_KEYS
    if unknown:
        raise ConfigError(f"{base}.{sorted(unknown)[0]}", f"unknown key (known: {sorted(JOB_ENV_KEYS)})")

    def f(name: str) -> str:
        return f"{base}.{name}"

    name = _str(f("name"), raw.get("name"))
    if not naming.valid_group_name(name) or len(name) > 24:
        raise ConfigError(f("name"), f"{name!r}: use 2-24 characters [a-z0-9-], starting with a letter")
    accelerator = _str(f("accelerator"), raw.get("accelerator", "cpu"), choices=presets.ACCELERATORS)
    instance_types = _instance_types(raw, f, accelerator)
    on_demand = _bool(f("onDemand"), raw.get("onDemand", True))
    spot = _bool(f("spot"), raw.get("spot", False))
    if not (on_demand or spot):
        raise ConfigError(f("onDemand"), "an environment needs on-demand or spot capacity (or both)")
    vcpus_default, memory_default, gpus_default = JOB_DEFAULTS[accelerator]
    vcpus = _int(f("vcpus"), raw.get("vcpus", vcpus_default), lo=1, hi=192)
    max_vcpus = _int(f("maxVcpus"), raw.get("maxVcpus", 64), lo=1, hi=100_000)
    if max_vcpus < vcpus:
        raise ConfigError(f("maxVcpus"), f"must be >= vcpus ({vcpus}) or no job could ever run")
    gpus = _int(f("gpus"), raw.get("gpus", gpus_default), lo=0, hi=16)
    if accelerator == "cpu" and gpus:
        raise ConfigError(f("gpus"), "a cpu environment has no GPUs (set accelerator: gpu)")
    image_tag = _str(
        f("imageTag"), raw.get("imageTag", f"{default_tag}-gpu" if accelerator == "gpu" else default_tag)
    )
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", image_tag):
        raise ConfigError(f("imageTag"), f"{image_tag!r} is not a valid image tag")
    return JobEnvironmentConfig(
        name=name,
        accelerator=accelerator,
        instance_types=instance_types,
        max_vcpus=max_vcpus,
        on_demand=on_demand,
        spot=spot,
        priority=_int(f("priority"), raw.get("priority", 10), lo=0, hi=1000),
        vcpus=vcpus,
        memory_mib=_int(f("memoryMib"), raw.get("memoryMib", memory_default), lo=512),
        gpus=gpus,
        root_volume_gb=_int(
            f("rootVolumeGb"), raw.get("rootVolumeGb", DEFAULT_ROOT_GB[accelerator]), lo=30, hi=16384
        ),
        image_tag=image_tag,
    )


def _jobs(raw: Any, default_tag: str) -> JobsConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(_key("jobs"), "expected a mapping (environments, retryAttempts)")
    unknown = set(raw) - JOBS_KEYS
    if unknown:
        raise ConfigError(f"{_key('jobs')}.{sorted(unknown)[0]}", f"unknown key (known: {sorted(JOBS_KEYS)})")
    envs_raw = raw.get("environments")
    if not isinstance(envs_raw, list) or not envs_raw:
        raise ConfigError(f"{_key('jobs')}.environments", "expected a non-empty list of environments")
    envs = tuple(_job_environment(i, e, default_tag) for i, e in enumerate(envs_raw))
    seen: set[str] = set()
    for i, env in enumerate(envs):
        if env.name in seen or (env.name.endswith("-spot") and env.name[:-5] in seen):
            raise ConfigError(
                f"{_key('jobs')}.environments[{i}].name", f"duplicate environment name {env.name!r}"
            )
        seen.add(env.name)
    return JobsConfig(
        environments=envs,
        retry_attempts=_int(f"{_key('jobs')}.retryAttempts", raw.get("retryAttempts", 3), lo=1, hi=10),
    )


# --- endpoints and the gateway ---------------------------------------------------------------------

#: Keys a variant shares with an instance group (parsed by :func:`_group`, errors under the variant's key).
VARIANT_GROUP_KEYS = frozenset(
    {
        "modelKey",
        "accelerator",
        "preset",
        "instanceTypes",
        "onDemandBase",
        "spotPercentage",
        "capacityRebalance",
        "warmPool",
        "amiId",
        "amiParameter",
        "rootVolumeGb",
        "imageTag",
        "environment",
        "port",
    }
)
INSTANCE_VARIANT_KEYS = VARIANT_GROUP_KEYS | {
    "name",
    "initialInstanceCount",
    "initialVariantWeight",
    "scaling",
}
SCALING_KEYS = frozenset({"minInstances", "maxInstances", "invocationsPerInstance"})
ROLLOUT_KEYS = frozenset({"strategy", "canaryPercent", "linearStepPercent", "waitSeconds"})
ALARM_KEYS = frozenset({"target5xxPerMinute", "p99LatencyMs", "evaluationMinutes"})
ENDPOINT_KEYS = frozenset({"name", "variants", "rollout", "alarms", "async"})
ASYNC_KEYS = frozenset(
    {
        "outputPath",
        "failurePath",
        "inputPath",
        "successTopicArn",
        "errorTopicArn",
        "includeInferenceResponseIn",
        "maxConcurrentInvocationsPerInstance",
        "backlogPerInstance",
        "idleMinutes",
    }
)
INCLUDE_RESPONSE_IN = ("SUCCESS_NOTIFICATION_TOPIC", "ERROR_NOTIFICATION_TOPIC")
_SNS_TOPIC_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
GATEWAY_KEYS = frozenset(
    {
        "scheme",
        "certificateArn",
        "sslPolicy",
        "allowedCidrs",
        "trustStoreCaBundle",
        "idleTimeout",
        "deletionProtection",
        "accessLogs",
    }
)
SCHEMES = ("internal", "internet-facing")
#: ALB security policies that refuse anything older than TLS 1.2.
_TLS12_POLICY_RE = re.compile(r"^ELBSecurityPolicy-(TLS13-1-[23]-|TLS-1-2-|FS-1-2-)[A-Za-z0-9-]+$")
_ACM_ARN_RE = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$")
_S3_OBJECT_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+$")


def _mapping(field_name: str, value: Any, known: frozenset[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(field_name, "expected a mapping")
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"{field_name}.{min(unknown)}", f"unknown key (known: {sorted(known)})")
    return value


def _weight(field_name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(field_name, f"expected a number, got {value!r}")
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field_name, f"expected a number, got {value!r}") from None
    if not weight >= 0 or weight == float("inf"):
        raise ConfigError(field_name, f"must be a finite number >= 0, got {value!r}")
    return weight


def _variant_kind(raw: Mapping[str, Any]) -> str:
    """Which kind of variant a block describes: the one place a kind is chosen (issue #21 adds kinds)."""
    if "serverless" in raw:
        return "serverless"
    return "instance"


def _instance_variant(
    base: str, raw: Mapping[str, Any], endpoint: str, storage: StorageConfig, default_tag: str
) -> VariantConfig:
    """A variant served by an Auto Scaling group (SageMaker's instance-backed production variant)."""
    unknown = set(raw) - INSTANCE_VARIANT_KEYS
    if unknown:
        raise ConfigError(f"{base}.{min(unknown)}", f"unknown key (known: {sorted(INSTANCE_VARIANT_KEYS)})")
    name = raw["name"]
    initial = _int(f"{base}.initialInstanceCount", raw.get("initialInstanceCount", 1), lo=0, hi=1000)
    weight = _weight(f"{base}.initialVariantWeight", raw.get("initialVariantWeight", 1.0))
    scaling: ScalingConfig | None = None
    if raw.get("scaling") is not None:
        sbase = f"{base}.scaling"
        sraw = _mapping(sbase, raw["scaling"], SCALING_KEYS)
        lo = _int(f"{sbase}.minInstances", sraw.get("minInstances", min(initial, 1)), lo=0, hi=1000)
        hi = _int(f"{sbase}.maxInstances", sraw.get("maxInstances", max(initial, lo, 1)), lo=1, hi=1000)
        if lo > hi:
            raise ConfigError(f"{sbase}.maxInstances", f"must be >= minInstances ({lo}), got {hi}")
        if not lo <= initial <= hi:
            raise ConfigError(
                f"{base}.initialInstanceCount",
                f"must be between minInstances ({lo}) and maxInstances ({hi}), got {initial}",
            )
        scaling = ScalingConfig(
            min_instances=lo,
            max_instances=hi,
            invocations_per_instance=_int(
                f"{sbase}.invocationsPerInstance",
                sraw.get("invocationsPerInstance", 1000),
                lo=1,
                hi=1_000_000,
            ),
        )
        lo_size, hi_size = lo, hi
    else:
        lo_size, hi_size = initial, max(initial, 1)
    group_raw = {key: raw[key] for key in VARIANT_GROUP_KEYS if key in raw}
    group_raw.update(role="serve", minSize=lo_size, maxSize=hi_size, desiredCapacity=initial)
    group = _group(0, group_raw, storage, default_tag, base=base, name=f"{endpoint}-{name}")
    return VariantConfig(
        name=name,
        kind="instance",
        weight=weight,
        initial_instance_count=initial,
        group=group,
        scaling=scaling,
    )


#: SageMaker's ServerlessConfig (botocore: ServerlessMemorySizeInMB 1024-6144 in 1 GB steps,
#: ServerlessMaxConcurrency and ServerlessProvisionedConcurrency 1-200).
SERVERLESS_MEMORY_SIZES_MB = (1024, 2048, 3072, 4096, 5120, 6144)
MAX_SERVERLESS_CONCURRENCY = 200
SERVERLESS_KEYS = frozenset(
    {
        "memorySizeInMB",
        "maxConcurrency",
        "provisionedConcurrency",
        "timeoutSeconds",
        "ephemeralStorageInMB",
        "multiValueHeaders",
    }
)
SERVERLESS_VARIANT_KEYS = frozenset(
    {"name", "modelKey", "initialVariantWeight", "serverless", "imageTag", "environment"}
)


def _model_key(field_name: str, value: Any, storage: StorageConfig) -> str:
    """A serving group's or variant's ``modelKey``: a ``.tar.gz`` key under ``modelPrefix`` (the serving role
    may read only that prefix), of plain path segments."""
    model_key = _str(field_name, value).lstrip("/")
    if not model_key.endswith(".tar.gz"):
        raise ConfigError(field_name, f"{model_key!r} must be a model.tar.gz key")
    if not model_key.startswith(storage.model_prefix):
        raise ConfigError(field_name, f"{model_key!r} is outside modelPrefix {storage.model_prefix!r}")
    # `models/../other/m.tar.gz` is a literal key under the prefix to S3, but reads (and to some
    # path-normalising tools resolves) as a key outside it; control characters break the user data's logs
    # and commands.
    if any(part in ("", ".", "..") for part in model_key.split("/")) or not model_key.isprintable():
        raise ConfigError(
            field_name,
            f"{model_key!r} must be plain path segments (no empty, '.' or '..' segment, "
            "no control character)",
        )
    return model_key


def _serverless_variant(
    base: str, raw: Mapping[str, Any], endpoint: str, storage: StorageConfig, default_tag: str
) -> VariantConfig:
    """A variant served by a Lambda function (SageMaker's serverless production variant)."""
    unknown = set(raw) - SERVERLESS_VARIANT_KEYS
    if unknown:
        key = sorted(unknown)[0]
        why = (
            "serverless variants have no instances"
            if key in INSTANCE_VARIANT_KEYS
            else f"unknown key (known: {sorted(SERVERLESS_VARIANT_KEYS)})"
        )
        raise ConfigError(f"{base}.{key}", why)
    sbase = f"{base}.serverless"
    sraw = _mapping(sbase, raw["serverless"], SERVERLESS_KEYS)
    if "memorySizeInMB" not in sraw:
        raise ConfigError(f"{sbase}.memorySizeInMB", f"required: one of {list(SERVERLESS_MEMORY_SIZES_MB)}")
    memory = _int(f"{sbase}.memorySizeInMB", sraw["memorySizeInMB"])
    if memory not in SERVERLESS_MEMORY_SIZES_MB:
        raise ConfigError(
            f"{sbase}.memorySizeInMB",
            f"must be one of {list(SERVERLESS_MEMORY_SIZES_MB)} (SageMaker's MemorySizeInMB), got {memory}",
        )
    if "maxConcurrency" not in sraw:
        raise ConfigError(f"{sbase}.maxConcurrency", f"required: 1-{MAX_SERVERLESS_CONCURRENCY}")
    max_concurrency = _int(
        f"{sbase}.maxConcurrency", sraw["maxConcurrency"], lo=1, hi=MAX_SERVERLESS_CONCURRENCY
    )
    provisioned: int | None = None
    if sraw.get("provisionedConcurrency") is not None:
        provisioned = _int(
            f"{sbase}.provisionedConcurrency",
            sraw["provisionedConcurrency"],
            lo=1,
            hi=MAX_SERVERLESS_CONCURRENCY,
        )
        if provisioned > max_concurrency:
            raise ConfigError(
                f"{sbase}.provisionedConcurrency",
                f"must be <= maxConcurrency ({max_concurrency}), got {provisioned}",
            )
    image_tag = _str(f"{base}.imageTag", raw.get("imageTag", default_tag))
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", image_tag):
        raise ConfigError(f"{base}.imageTag", f"{image_tag!r} is not a valid image tag")
    environment = _str_map(f"{base}.environment", raw.get("environment"))
    for key in environment:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{base}.environment.{key}", "not a valid environment variable name")
        if key.startswith("AWS_") or key in SERVERLESS_RESERVED_ENV:
            raise ConfigError(f"{base}.environment.{key}", "set by Lambda or by selfmaker")
    return VariantConfig(
        name=raw["name"],
        kind="serverless",
        weight=_weight(f"{base}.initialVariantWeight", raw.get("initialVariantWeight", 1.0)),
        serverless=ServerlessVariantConfig(
            model_key=_model_key(f"{base}.modelKey", raw.get("modelKey"), storage),
            image_tag=image_tag,
            memory_size_in_mb=memory,
            max_concurrency=max_concurrency,
            provisioned_concurrency=provisioned,
            environment=environment,
            timeout_seconds=_int(f"{sbase}.timeoutSeconds", sraw.get("timeoutSeconds", 60), lo=1, hi=900),
            ephemeral_storage_in_mb=_int(
                f"{sbase}.ephemeralStorageInMB", sraw.get("ephemeralStorageInMB", 1024), lo=512, hi=10240
            ),
            multi_value_headers=_bool(f"{sbase}.multiValueHeaders", sraw.get("multiValueHeaders", False)),
        ),
    )


#: Environment variables of a serverless function that selfmaker sets (serving/lambda_handler.py).
SERVERLESS_RESERVED_ENV = frozenset(
    {
        "SELFMAKER_MODEL_DATA",
        "SELFMAKER_ENDPOINT_NAME",
        "SELFMAKER_VARIANT_NAME",
        "SELFMAKER_LAMBDA_STATE_DIR",
    }
)

#: Parser of each variant kind, called with (key, raw block, endpoint name, storage, default image tag).
VARIANT_PARSERS: dict[str, Callable[[str, Mapping[str, Any], str, StorageConfig, str], VariantConfig]] = {
    "instance": _instance_variant,
    "serverless": _serverless_variant,
}


def _rollout(base: str, value: Any) -> RolloutConfig:
    raw = _mapping(base, value, ROLLOUT_KEYS)
    strategy = _str(f"{base}.strategy", raw.get("strategy", "canary"), choices=endpoints.STRATEGIES)
    return RolloutConfig(
        strategy=strategy,
        canary_percent=_int(f"{base}.canaryPercent", raw.get("canaryPercent", 10), lo=1, hi=99),
        linear_step_percent=_int(f"{base}.linearStepPercent", raw.get("linearStepPercent", 25), lo=1, hi=50),
        wait_seconds=_int(f"{base}.waitSeconds", raw.get("waitSeconds", 300), lo=0, hi=172800),
    )


def _alarms(base: str, value: Any) -> AlarmsConfig:
    raw = _mapping(base, value, ALARM_KEYS)
    return AlarmsConfig(
        target_5xx_per_minute=_int(f"{base}.target5xxPerMinute", raw.get("target5xxPerMinute", 5), lo=1),
        p99_latency_ms=_int(f"{base}.p99LatencyMs", raw.get("p99LatencyMs", 2000), lo=1, hi=3_600_000),
        evaluation_minutes=_int(f"{base}.evaluationMinutes", raw.get("evaluationMinutes", 2), lo=1, hi=60),
    )


def _key_prefix(field_name: str, value: Any) -> str:
    prefix = naming.normalize_key_prefix(_str(field_name, value))
    if not prefix or not re.fullmatch(r"[A-Za-z0-9!_.*'()/-]+", prefix):
        raise ConfigError(field_name, f"{value!r} is not a usable S3 key prefix")
    return prefix


def _async(base: str, value: Any, endpoint: str) -> AsyncConfig:
    """``async:`` of an endpoint (SageMaker's AsyncInferenceConfig names)."""
    raw = _mapping(base, value, ASYNC_KEYS)
    if "maxConcurrentInvocationsPerInstance" not in raw:
        raise ConfigError(
            f"{base}.maxConcurrentInvocationsPerInstance",
            "required: invocations each worker "
            "instance runs at once (SageMaker's ClientConfig.MaxConcurrentInvocationsPerInstance)",
        )
    concurrency = _int(
        f"{base}.maxConcurrentInvocationsPerInstance",
        raw["maxConcurrentInvocationsPerInstance"],
        lo=1,
        hi=1000,
    )
    topics: dict[str, str | None] = {}
    for key in ("successTopicArn", "errorTopicArn"):
        topic = raw.get(key)
        if topic is not None:
            topic = _str(f"{base}.{key}", topic)
            if not _SNS_TOPIC_ARN_RE.match(topic):
                raise ConfigError(f"{base}.{key}", f"{topic!r} is not an SNS topic ARN")
        topics[key] = topic
    include = raw.get("includeInferenceResponseIn") or []
    if not isinstance(include, list):
        raise ConfigError(f"{base}.includeInferenceResponseIn", "expected a list")
    for i, item in enumerate(include):
        if item not in INCLUDE_RESPONSE_IN:
            raise ConfigError(
                f"{base}.includeInferenceResponseIn[{i}]",
                f"must be one of {list(INCLUDE_RESPONSE_IN)}, got {item!r}",
            )
    backlog = _weight(f"{base}.backlogPerInstance", raw.get("backlogPerInstance", concurrency))
    if backlog <= 0:
        raise ConfigError(f"{base}.backlogPerInstance", "must be > 0")
    output = _key_prefix(f"{base}.outputPath", raw.get("outputPath", f"async/{endpoint}/output/"))
    failure = _key_prefix(f"{base}.failurePath", raw.get("failurePath", f"async/{endpoint}/failures/"))
    state = f"async/{endpoint}/state/"
    for key, prefix in (("outputPath", output), ("failurePath", failure)):
        if prefix.startswith(state) or state.startswith(prefix):
            raise ConfigError(f"{base}.{key}", f"{prefix!r} overlaps the workers' state prefix {state!r}")
    return AsyncConfig(
        max_concurrent_invocations_per_instance=concurrency,
        output_prefix=output,
        failure_prefix=failure,
        state_prefix=state,
        input_prefix=_key_prefix(f"{base}.inputPath", raw.get("inputPath", f"async/{endpoint}/")),
        success_topic_arn=topics["successTopicArn"],
        error_topic_arn=topics["errorTopicArn"],
        include_inference_response_in=tuple(include),
        backlog_per_instance=backlog,
        idle_minutes=_int(f"{base}.idleMinutes", raw.get("idleMinutes", 15), lo=1, hi=1440),
    )


def _endpoint(index: int, raw: Any, storage: StorageConfig, default_tag: str) -> EndpointConfig:
    base = f"{_key('endpoints')}[{index}]"
    raw = _mapping(base, raw, ENDPOINT_KEYS)
    name = _str(f"{base}.name", raw.get("name"))
    if not endpoints.valid_sagemaker_name(name):
        raise ConfigError(
            f"{base}.name", f"{name!r}: use 1-63 characters [a-zA-Z0-9-], not starting or ending with -"
        )
    variants_raw = raw.get("variants")
    if not isinstance(variants_raw, list) or not variants_raw:
        raise ConfigError(f"{base}.variants", "expected a non-empty list of production variants")
    if len(variants_raw) > endpoints.MAX_TARGET_GROUPS:
        raise ConfigError(
            f"{base}.variants",
            f"at most {endpoints.MAX_TARGET_GROUPS} variants (an ALB forward "
            f"action weights at most {endpoints.MAX_TARGET_GROUPS} target groups), got {len(variants_raw)}",
        )
    variants: list[VariantConfig] = []
    for i, vraw in enumerate(variants_raw):
        vbase = f"{base}.variants[{i}]"
        if not isinstance(vraw, Mapping):
            raise ConfigError(vbase, "expected a mapping")
        vname = _str(f"{vbase}.name", vraw.get("name"))
        if not endpoints.valid_sagemaker_name(vname):
            raise ConfigError(
                f"{vbase}.name", f"{vname!r}: use 1-63 characters [a-zA-Z0-9-], not starting or ending with -"
            )
        if any(v.name == vname for v in variants):
            raise ConfigError(f"{vbase}.name", f"duplicate variant name {vname!r}")
        kind = _variant_kind(vraw)
        if "async" in raw and kind != "instance":
            # SageMaker: AsyncInferenceConfig cannot be used with serverless variants.
            raise ConfigError(
                f"{vbase}.{kind}",
                f"an async endpoint needs an instance variant (its workers), not a {kind} one",
            )
        if "async" in raw and "warmPool" in vraw:
            raise ConfigError(
                f"{vbase}.warmPool",
                "async endpoints wake from zero on their backlog; warm pools are for real-time variants",
            )
        if (
            "async" in raw
            and isinstance(vraw.get("scaling"), Mapping)
            and "invocationsPerInstance" in vraw["scaling"]
        ):
            raise ConfigError(
                f"{vbase}.scaling.invocationsPerInstance",
                "async endpoints scale on their backlog "
                "(async.backlogPerInstance), not on invocations per instance",
            )
        if kind not in VARIANT_PARSERS:
            raise ConfigError(
                f"{vbase}.{kind}", f"{kind} variants are not supported by this version of selfmaker"
            )
        variants.append(VARIANT_PARSERS[kind](vbase, {**vraw, "name": vname}, name, storage, default_tag))
    kinds = {v.kind for v in variants}
    if "serverless" in kinds and len(kinds) > 1:
        # SageMaker: an endpoint config's variants are all serverless or all instance-backed
        j = next(i for i, v in enumerate(variants) if v.kind != variants[0].kind)
        key = "serverless" if variants[j].kind == "serverless" else "name"
        raise ConfigError(
            f"{base}.variants[{j}].{key}",
            "an endpoint's variants are all serverless or all "
            f"instance-backed, as in SageMaker; variants[0] is {variants[0].kind}, this one "
            f"{variants[j].kind}",
        )
    if kinds == {"serverless"}:
        for key in ("rollout", "alarms"):
            if raw.get(key) is not None:
                raise ConfigError(
                    f"{base}.{key}",
                    "serverless endpoints have no instances to roll out: a new "
                    "function version takes the traffic at once",
                )
    try:
        endpoints.alb_weights([v.weight for v in variants])
    except ValueError as exc:
        raise ConfigError(f"{base}.variants", f"initialVariantWeight: {exc}") from None
    async_inference: AsyncConfig | None = None
    if "async" in raw:
        if len(variants) != 1:
            raise ConfigError(
                f"{base}.variants",
                f"an async endpoint has one instance variant (its worker group), got {len(variants)}",
            )
        for key in ("rollout", "alarms"):
            if key in raw:
                raise ConfigError(
                    f"{base}.{key}",
                    "real-time endpoints only: an async endpoint's workers are "
                    "replaced by instance refresh without traffic shifting",
                )
        async_inference = _async(f"{base}.async", raw["async"], name)
    return EndpointConfig(
        name=name,
        variants=tuple(variants),
        async_inference=async_inference,
        kind="async" if async_inference else "serverless" if kinds == {"serverless"} else "realtime",
        rollout=_rollout(f"{base}.rollout", raw.get("rollout")),
        alarms=_alarms(f"{base}.alarms", raw.get("alarms")),
    )


def _gateway(value: Any, vpc_cidr: str) -> GatewayConfig:
    base = _key("gateway")
    raw = _mapping(base, value, GATEWAY_KEYS)
    scheme = _str(f"{base}.scheme", raw.get("scheme", "internal"), choices=SCHEMES)
    cert = raw.get("certificateArn")
    if cert is not None:
        cert = _str(f"{base}.certificateArn", cert)
        if not _ACM_ARN_RE.match(cert):
            raise ConfigError(f"{base}.certificateArn", f"{cert!r} is not an ACM certificate ARN")
    policy = _str(f"{base}.sslPolicy", raw.get("sslPolicy", GatewayConfig.ssl_policy))
    if not _TLS12_POLICY_RE.match(policy):
        raise ConfigError(
            f"{base}.sslPolicy",
            f"{policy!r} allows TLS older than 1.2; use a TLS13-1-2, TLS-1-2 or FS-1-2 policy",
        )
    cidrs_raw = raw.get("allowedCidrs")
    if cidrs_raw is not None and (
        not isinstance(cidrs_raw, list) or not all(isinstance(c, str) for c in cidrs_raw)
    ):
        raise ConfigError(f"{base}.allowedCidrs", "expected a list of CIDR blocks")
    cidrs: list[str] = []
    for i, text in enumerate(cidrs_raw or []):
        try:
            cidrs.append(str(ipaddress.IPv4Network(text.strip(), strict=True)))
        except ValueError as exc:
            raise ConfigError(f"{base}.allowedCidrs[{i}]", str(exc)) from None
    if scheme == "internet-facing":
        if cert is None:
            raise ConfigError(
                f"{base}.certificateArn", "an internet-facing gateway needs an ACM certificate (HTTPS only)"
            )
        if not cidrs:
            raise ConfigError(
                f"{base}.allowedCidrs",
                "an internet-facing gateway needs the client CIDRs it accepts (0.0.0.0/0 for anyone)",
            )
    elif not cidrs:
        cidrs = [vpc_cidr]  # internal: the VPC (and peered networks only when listed)
    bundle = raw.get("trustStoreCaBundle")
    if bundle is not None:
        bundle = _str(f"{base}.trustStoreCaBundle", bundle)
        if not _S3_OBJECT_RE.match(bundle):
            raise ConfigError(f"{base}.trustStoreCaBundle", f"{bundle!r} is not an s3://bucket/key URI")
        if cert is None:
            raise ConfigError(f"{base}.trustStoreCaBundle", "mutual TLS needs HTTPS: set certificateArn too")
    return GatewayConfig(
        scheme=scheme,
        certificate_arn=cert,
        ssl_policy=policy,
        allowed_cidrs=tuple(cidrs),
        trust_store_ca_bundle=bundle,
        idle_timeout=_int(f"{base}.idleTimeout", raw.get("idleTimeout", 60), lo=1, hi=4000),
        deletion_protection=_bool(f"{base}.deletionProtection", raw.get("deletionProtection", False)),
        access_logs=_bool(f"{base}.accessLogs", raw.get("accessLogs", True)),
    )


def from_mapping(values: Mapping[str, Any], *, project: str, stack: str) -> StackConfig:
    """Build the :class:`StackConfig` from raw values keyed like the stack file (without namespace).

    Unknown keys are errors (a typo must not silently fall back to a default).
    """
    unknown = set(values) - set(DEFAULTS)
    if unknown:
        raise ConfigError(_key(sorted(unknown)[0]), f"unknown key (known: {sorted(DEFAULTS)})")
    raw = {**DEFAULTS, **{k: v for k, v in values.items() if v is not None}}
    for key, value in raw.items():
        if value is ...:
            raise ConfigError(_key(key), "required; set it with `pulumi config set " + key + " <value>`")
    try:
        tags = naming.standard_tags(project, stack, _str_map(_key("tags"), raw["tags"]))
        prefix = naming.resource_prefix(project, stack)
    except ValueError as exc:
        raise ConfigError(_key("tags"), str(exc)) from None
    storage = _storage(raw)
    image_tag = _str(_key("imageTag"), raw["imageTag"])
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", image_tag):
        raise ConfigError(_key("imageTag"), f"{image_tag!r} is not a valid image tag")
    groups_raw = raw["groups"]
    if not isinstance(groups_raw, list):
        raise ConfigError(_key("groups"), "expected a list of groups")
    groups = tuple(_group(i, g, storage, image_tag) for i, g in enumerate(groups_raw))
    seen: set[str] = set()
    for i, group in enumerate(groups):
        if group.name in seen:
            raise ConfigError(f"{_key('groups')}[{i}].name", f"duplicate group name {group.name!r}")
        seen.add(group.name)
    endpoints_raw = raw["endpoints"]
    if not isinstance(endpoints_raw, list):
        raise ConfigError(_key("endpoints"), "expected a list of endpoints")
    endpoint_configs = tuple(_endpoint(i, e, storage, image_tag) for i, e in enumerate(endpoints_raw))
    names: set[str] = set()
    for i, endpoint in enumerate(endpoint_configs):
        if endpoint.name in names:
            raise ConfigError(f"{_key('endpoints')}[{i}].name", f"duplicate endpoint name {endpoint.name!r}")
        names.add(endpoint.name)
        for j, variant in enumerate(endpoint.variants):
            # A variant's instances log to /<prefix>/<endpoint>-<variant>, as a group's to /<prefix>/<group>.
            if variant.group is not None and variant.group.name in seen:
                raise ConfigError(
                    f"{_key('endpoints')}[{i}].variants[{j}].name",
                    f"{variant.group.name!r} is also the name of a group",
                )
    network = _network(raw)
    gateway = _gateway(raw["gateway"], network.vpc_cidr) if endpoint_configs or raw["gateway"] else None
    return StackConfig(
        project=project,
        stack=stack,
        prefix=prefix,
        tags=tags,
        network=network,
        storage=storage,
        keep_images=_int(_key("keepImages"), raw["keepImages"], lo=1, hi=1000),
        image_tag=image_tag,
        log_retention_days=_retention(_key("logRetentionDays"), raw["logRetentionDays"]),
        ssm_access=_bool(_key("ssmAccess"), raw["ssmAccess"]),
        groups=groups,
        endpoints=endpoint_configs,
        gateway=gateway,
        jobs=_jobs(raw["jobs"], image_tag),
    )


def load(config: Any, *, project: str, stack: str, present_keys: Iterable[str] = ()) -> StackConfig:
    """Read every known key from a ``pulumi.Config(NAMESPACE)`` and build the :class:`StackConfig`.

    Pulumi hands structured values (``tags``, ``groups``) over as JSON text. ``present_keys`` are the
    keys actually set in the stack; any that selfmaker does not know is reported (typo protection).
    """
    unknown = sorted(set(present_keys) - set(DEFAULTS))
    if unknown:
        raise ConfigError(_key(unknown[0]), f"unknown key (known: {sorted(DEFAULTS)})")
    values: dict[str, Any] = {}
    for key in DEFAULTS:
        text = config.get(key)
        if text is None:
            continue
        if key in OBJECT_KEYS:
            try:
                values[key] = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(_key(key), f"not valid structured config: {exc}") from None
        else:
            values[key] = text
    return from_mapping(values, project=project, stack=stack)
