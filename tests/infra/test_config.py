"""The typed stack config: defaults, coercion of stack-file strings, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra import config as stack_config

SERVE = {"name": "serve-cpu", "role": "serve", "modelKey": "models/m/model.tar.gz"}
GPU_SERVE = {"name": "serve-gpu", "role": "serve", "accelerator": "gpu", "modelKey": "models/m/model.tar.gz"}


def build(**values: Any) -> stack_config.StackConfig:
    return stack_config.from_mapping({"imageTag": "0.1.0", **values}, project="selfmaker", stack="dev")


def test_defaults() -> None:
    cfg = build()
    assert cfg.prefix == "selfmaker-dev"
    assert cfg.tags == {"Project": "selfmaker", "Stack": "dev", "ManagedBy": "pulumi"}
    assert cfg.network == stack_config.NetworkConfig("10.0.0.0/16", 2, "single", True, True, 90)
    assert cfg.storage.encryption == "kms" and cfg.storage.model_prefix == "models/"
    assert cfg.keep_images == 20 and cfg.groups == ()


def test_stack_file_strings_are_coerced() -> None:
    cfg = build(
        azCount="3", flowLogs="false", interfaceEndpoints="True", keepImages=" 7 ", modelPrefix="/artifacts"
    )
    assert (cfg.network.az_count, cfg.network.flow_logs, cfg.network.interface_endpoints) == (3, False, True)
    assert cfg.keep_images == 7 and cfg.storage.model_prefix == "artifacts/"


def test_group_defaults_follow_the_accelerator() -> None:
    cfg = build(groups=[SERVE, GPU_SERVE])
    serve, gpu = cfg.groups
    assert serve.instance_types == ("c5.large", "c6i.large", "m5.large") and serve.root_volume_gb == 40
    assert serve.ami_parameter == stack_config.SSM_AMI["cpu"]
    assert (serve.min_size, serve.max_size, serve.desired_capacity) == (0, 1, 0)
    assert gpu.instance_types == ("g4dn.xlarge", "g5.xlarge") and gpu.root_volume_gb == 100
    assert gpu.ami_parameter == stack_config.SSM_AMI["gpu"]
    assert gpu.image_tag == "0.1.0-gpu" and serve.image_tag == "0.1.0" and serve.capacity_rebalance is False


def test_group_values() -> None:
    group = {
        **GPU_SERVE,
        "instanceTypes": ["p3.2xlarge"],
        "minSize": "1",
        "maxSize": 3,
        "desiredCapacity": 2,
        "spotPercentage": 100,
        "environment": {"LOG_LEVEL": "20"},
        "imageTag": "v2",
    }
    (g,) = build(groups=[group]).groups
    assert g.instance_types == ("p3.2xlarge",) and (g.min_size, g.max_size, g.desired_capacity) == (1, 3, 2)
    assert g.capacity_rebalance is True  # spot groups rebalance by default
    assert g.image_tag == "v2" and g.environment == {"LOG_LEVEL": "20"}


def test_jobs_defaults_and_values() -> None:
    assert build().jobs is None  # no selfmaker:jobs, no AWS Batch
    cfg = build(
        jobs={
            "environments": [
                {"name": "cpu"},
                {
                    "name": "gpu",
                    "accelerator": "gpu",
                    "spot": "true",
                    "onDemand": False,
                    "maxVcpus": "32",
                    "vcpus": 8,
                },
            ],
            "retryAttempts": "5",
        }
    )
    assert cfg.jobs is not None and cfg.jobs.retry_attempts == 5
    cpu, gpu = cfg.jobs.environments
    assert (cpu.on_demand, cpu.spot, cpu.vcpus, cpu.memory_mib, cpu.gpus) == (True, False, 4, 7000, 0)
    assert cpu.instance_types == ("c5.large", "c6i.large", "m5.large") and cpu.image_tag == "0.1.0"
    assert (gpu.on_demand, gpu.spot, gpu.max_vcpus, gpu.vcpus, gpu.gpus) == (False, True, 32, 8, 1)
    assert gpu.image_tag == "0.1.0-gpu" and gpu.root_volume_gb == 100


def test_warm_pool() -> None:
    group = {
        **SERVE,
        "instanceTypes": ["m5.large"],
        "maxSize": 2,
        "warmPool": {"minSize": 1, "state": "Running"},
    }
    (g,) = build(groups=[group]).groups
    assert g.warm_pool == stack_config.WarmPoolConfig(min_size=1, max_prepared_capacity=None, state="Running")
    (g,) = build(groups=[{**group, "warmPool": True}]).groups
    assert g.warm_pool == stack_config.WarmPoolConfig(0, None, "Stopped")


G = "selfmaker:groups[0]"


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"azCount": 1}, "selfmaker:azCount", ">= 2"),
        ({"azCount": "two"}, "selfmaker:azCount", "expected an integer"),
        ({"azCount": True}, "selfmaker:azCount", "expected an integer"),
        ({"vpcCidr": "8.8.0.0/16"}, "selfmaker:vpcCidr", "private"),
        ({"vpcCidr": "10.0.0.0/27"}, "selfmaker:vpcCidr", "too small"),
        ({"natGateways": "none"}, "selfmaker:natGateways", "must be one of"),
        ({"flowLogs": "yes"}, "selfmaker:flowLogs", "true or false"),
        ({"flowLogsRetentionDays": 45}, "selfmaker:flowLogsRetentionDays", "CloudWatch accepts only"),
        ({"encryption": "none"}, "selfmaker:encryption", "must be one of"),
        ({"keepImages": 0}, "selfmaker:keepImages", ">= 1"),
        ({"modelPrefix": "   "}, "selfmaker:modelPrefix", "non-empty"),
        ({"tags": {"Stack": "x"}}, "selfmaker:tags", "cannot be overridden"),
        ({"tags": ["a"]}, "selfmaker:tags", "expected a mapping"),
        ({"imageTag": "bad tag"}, "selfmaker:imageTag", "not a valid image tag"),
        ({"groups": [{**SERVE, "imageTag": "v1:2"}]}, f"{G}.imageTag", "not a valid image tag"),
        ({"groups": {"name": "x"}}, "selfmaker:groups", "expected a list"),
        ({"nope": 1}, "selfmaker:nope", "unknown key"),
        ({"groups": [{**SERVE, "colour": "red"}]}, f"{G}.colour", "unknown key"),
        ({"groups": [{**SERVE, "name": "Serve CPU"}]}, f"{G}.name", "2-32 characters"),
        ({"groups": [{**SERVE, "role": "predict"}]}, f"{G}.role", "must be one of"),
        ({"groups": [{**SERVE, "accelerator": "tpu"}]}, f"{G}.accelerator", "must be one of"),
        ({"groups": [{**SERVE, "instanceTypes": ["g5.xlarge"]}]}, f"{G}.instanceTypes", "GPU type"),
        ({"groups": [{**SERVE, "instanceTypes": "m5.large"}]}, f"{G}.instanceTypes", "list"),
        ({"groups": [{**SERVE, "preset": "gpu-small"}]}, f"{G}.preset", "unknown cpu preset"),
        ({"groups": [{**SERVE, "minSize": 3, "maxSize": 2}]}, f"{G}.maxSize", ">= minSize"),
        ({"groups": [{**SERVE, "maxSize": 2, "desiredCapacity": 3}]}, f"{G}.desiredCapacity", "<= 2"),
        ({"groups": [{**SERVE, "spotPercentage": 101}]}, f"{G}.spotPercentage", "<= 100"),
        ({"groups": [{**SERVE, "onDemandBase": -1}]}, f"{G}.onDemandBase", ">= 0"),
        (
            {
                "groups": [
                    {**SERVE, "warmPool": {"minSize": 1}, "spotPercentage": 50, "instanceTypes": ["m5.large"]}
                ]
            },
            f"{G}.warmPool",
            "spot",
        ),
        ({"groups": [{**SERVE, "warmPool": {"minSize": 1}}]}, f"{G}.warmPool", "exactly one instance type"),
        ({"groups": [{**SERVE, "warmPool": {"size": 1}}]}, f"{G}.warmPool.size", "unknown key"),
        (
            {"groups": [{**SERVE, "warmPool": {"state": "Frozen"}, "instanceTypes": ["m5.large"]}]},
            f"{G}.warmPool.state",
            "must be one of",
        ),
        ({"groups": [{**SERVE, "amiId": "ubuntu"}]}, f"{G}.amiId", "not an AMI id"),
        (
            {"groups": [{**SERVE, "amiId": "ami-0123456789abcdef0", "amiParameter": "/x"}]},
            f"{G}.amiParameter",
            "not both",
        ),
        ({"groups": [{**SERVE, "amiParameter": "aws/service/x"}]}, f"{G}.amiParameter", "SSM parameter"),
        ({"groups": [{**SERVE, "rootVolumeGb": 4}]}, f"{G}.rootVolumeGb", ">= 8"),
        ({"groups": [{**SERVE, "port": 80}]}, f"{G}.port", ">= 1024"),
        (
            {"groups": [{**SERVE, "environment": {"bad-name": "1"}}]},
            f"{G}.environment.bad-name",
            "environment variable",
        ),
        ({"groups": [{**SERVE, "environment": {"A": {"nested": 1}}}]}, f"{G}.environment.A", "string"),
        (
            {"groups": [{**SERVE, "environment": {"AWS_REGION": "x"}}]},
            f"{G}.environment.AWS_REGION",
            "set by selfmaker",
        ),
        ({"groups": [{"name": "serve-cpu", "role": "serve"}]}, f"{G}.modelKey", "non-empty string"),
        ({"groups": [{**SERVE, "modelKey": "models/m/model.onnx"}]}, f"{G}.modelKey", "model.tar.gz"),
        ({"groups": [{**SERVE, "modelKey": "other/m.tar.gz"}]}, f"{G}.modelKey", "outside modelPrefix"),
        (
            {"groups": [{**SERVE, "modelKey": "models/../other/m.tar.gz"}]},
            f"{G}.modelKey",
            "plain path segments",
        ),
        ({"groups": [{**SERVE, "channels": {"train": "x/"}}]}, f"{G}.channels", "unknown key"),
        (
            {"groups": [{"name": "train-gpu", "role": "train"}]},
            f"{G}.role",
            "replaced by AWS Batch job queues",
        ),
        ({"groups": ["serve"]}, "selfmaker:groups[0]", "expected a mapping"),
        ({"groups": [SERVE, {**GPU_SERVE, "name": "serve-cpu"}]}, "selfmaker:groups[1].name", "duplicate"),
        ({"jobs": []}, "selfmaker:jobs", "expected a mapping"),
        ({"jobs": {"queues": []}}, "selfmaker:jobs.queues", "unknown key"),
        ({"jobs": {"environments": []}}, "selfmaker:jobs.environments", "non-empty list"),
        (
            {"jobs": {"environments": [{"name": "Cpu"}]}},
            "selfmaker:jobs.environments[0].name",
            "2-24 characters",
        ),
        (
            {"jobs": {"environments": [{"name": "cpu", "gpus": 1}]}},
            "selfmaker:jobs.environments[0].gpus",
            "no GPUs",
        ),
        (
            {"jobs": {"environments": [{"name": "cpu", "onDemand": False}]}},
            "selfmaker:jobs.environments[0].onDemand",
            "on-demand or spot",
        ),
        (
            {"jobs": {"environments": [{"name": "cpu", "vcpus": 8, "maxVcpus": 4}]}},
            "selfmaker:jobs.environments[0].maxVcpus",
            ">= vcpus",
        ),
        (
            {"jobs": {"environments": [{"name": "cpu"}, {"name": "cpu"}]}},
            "selfmaker:jobs.environments[1].name",
            "duplicate",
        ),
        (
            {
                "jobs": {
                    "environments": [{"name": "gpu", "accelerator": "gpu", "instanceTypes": ["c5.large"]}]
                }
            },
            "selfmaker:jobs.environments[0].instanceTypes",
            "",
        ),
        (
            {"jobs": {"environments": [{"name": "cpu"}], "retryAttempts": 0}},
            "selfmaker:jobs.retryAttempts",
            ">= 1",
        ),
    ],
)
def test_errors_name_the_field(values: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(stack_config.ConfigError) as err:
        build(**values)
    assert err.value.field == field
    assert message in str(err.value)
    assert str(err.value).startswith(f"{field}: ")


def test_image_tag_is_required() -> None:
    with pytest.raises(stack_config.ConfigError, match=r"^selfmaker:imageTag: required"):
        stack_config.from_mapping({}, project="selfmaker", stack="dev")


class FakeConfig:
    """A ``pulumi.Config`` look-alike over a dict of strings (what the engine hands the program)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, key: str) -> str | None:
        return self.values.get(key)


def test_load_parses_structured_values_and_rejects_unknown_keys() -> None:
    values = {
        "imageTag": "1",
        "groups": '[{"name": "serve-cpu", "role": "serve", "modelKey": "models/a.tar.gz"}]',
        "tags": '{"Team": "ml"}',
        "azCount": "3",
    }
    cfg = stack_config.load(FakeConfig(values), project="selfmaker", stack="prod", present_keys=list(values))
    assert cfg.groups[0].name == "serve-cpu" and cfg.tags["Team"] == "ml" and cfg.network.az_count == 3
    with pytest.raises(stack_config.ConfigError, match=r"^selfmaker:azcount: unknown key"):
        stack_config.load(
            FakeConfig(values), project="selfmaker", stack="prod", present_keys=[*values, "azcount"]
        )
    with pytest.raises(stack_config.ConfigError, match=r"^selfmaker:tags: not valid structured config"):
        stack_config.load(FakeConfig({**values, "tags": "{oops"}), project="selfmaker", stack="prod")


SIZES = st.one_of(st.none(), st.integers(-2, 12))


@given(SIZES, SIZES, SIZES, SIZES, st.one_of(st.none(), st.integers(-5, 110)))
def test_group_sizes_are_consistent_or_rejected_by_name(
    min_size: int | None, max_size: int | None, desired: int | None, base: int | None, spot: int | None
) -> None:
    raw = {
        "minSize": min_size,
        "maxSize": max_size,
        "desiredCapacity": desired,
        "onDemandBase": base,
        "spotPercentage": spot,
    }
    group = {**SERVE, **{k: v for k, v in raw.items() if v is not None}}
    try:
        (g,) = build(groups=[group]).groups
    except stack_config.ConfigError as err:
        assert err.field.removeprefix(f"{G}.") in raw
        return
    assert 0 <= g.min_size <= g.desired_capacity <= g.max_size and g.max_size >= 1
    assert 0 <= g.on_demand_base <= g.max_size and 0 <= g.spot_percentage <= 100


CHAMPION = {
    "name": "champion",
    "modelKey": "models/churn/v1/model.tar.gz",
    "initialInstanceCount": 2,
    "initialVariantWeight": 0.9,
    "scaling": {"minInstances": 1, "maxInstances": 6, "invocationsPerInstance": 1000},
}
CHALLENGER = {"name": "challenger", "modelKey": "models/churn/v2/model.tar.gz", "initialVariantWeight": 0.1}
CHURN = {
    "name": "churn",
    "variants": [CHAMPION, CHALLENGER],
    "rollout": {"strategy": "canary", "canaryPercent": 10},
}
CERT = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789"
E = "selfmaker:endpoints[0]"
V = f"{E}.variants"


def test_endpoints_follow_the_production_variant_shapes() -> None:
    cfg = build(endpoints=[CHURN])
    (churn,) = cfg.endpoints
    champion, challenger = churn.variants
    assert (champion.name, champion.kind, champion.weight, champion.initial_instance_count) == (
        "champion",
        "instance",
        0.9,
        2,
    )
    assert champion.scaling == stack_config.ScalingConfig(1, 6, 1000)
    assert champion.group is not None and (
        champion.group.min_size,
        champion.group.max_size,
        champion.group.desired_capacity,
    ) == (1, 6, 2)
    assert champion.group.model_key == "models/churn/v1/model.tar.gz" and champion.group.role == "serve"
    # without scaling a variant keeps its initial count
    assert challenger.scaling is None and challenger.group is not None
    assert (challenger.group.min_size, challenger.group.max_size, challenger.group.desired_capacity) == (
        1,
        1,
        1,
    )
    assert churn.rollout.checkpoints() == [10, 100] and churn.rollout.wait_seconds == 300
    # a gateway exists as soon as there is an endpoint: internal, open to the VPC
    assert cfg.gateway == stack_config.GatewayConfig(allowed_cidrs=("10.0.0.0/16",))
    assert build().gateway is None


def test_internet_facing_gateway_with_https_and_mutual_tls() -> None:
    cfg = build(
        endpoints=[CHURN],
        gateway={
            "scheme": "internet-facing",
            "certificateArn": CERT,
            "allowedCidrs": ["0.0.0.0/0"],
            "trustStoreCaBundle": "s3://certs-bucket/ca.pem",
        },
    )
    assert cfg.gateway is not None
    assert (cfg.gateway.scheme, cfg.gateway.allowed_cidrs, cfg.gateway.ssl_policy) == (
        "internet-facing",
        ("0.0.0.0/0",),
        "ELBSecurityPolicy-TLS13-1-2-2021-06",
    )


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "name": f"v{i}"} for i in range(6)]}]},
            V,
            "at most 5 variants",
        ),
        (
            {
                "endpoints": [
                    {
                        **CHURN,
                        "variants": [
                            {**CHAMPION, "initialVariantWeight": 0},
                            {**CHALLENGER, "initialVariantWeight": 0},
                        ],
                    }
                ]
            },
            V,
            "at least one weight",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [CHAMPION, {**CHALLENGER, "name": "champion"}]}]},
            f"{V}[1].name",
            "duplicate",
        ),
        ({"endpoints": [CHURN, CHURN]}, "selfmaker:endpoints[1].name", "duplicate endpoint"),
        ({"endpoints": [{**CHURN, "name": "churn_v2"}]}, f"{E}.name", "1-63 characters"),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "name": "-x"}]}]},
            f"{V}[0].name",
            "1-63 characters",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "modelKey": "other/m.tar.gz"}]}]},
            f"{V}[0].modelKey",
            "outside modelPrefix",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "modelKey": "models/../secret/m.tar.gz"}]}]},
            f"{V}[0].modelKey",
            "plain path segments",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "modelKey": "models/churn//m.tar.gz"}]}]},
            f"{V}[0].modelKey",
            "plain path segments",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "modelKey": "models/churn/m\n.tar.gz"}]}]},
            f"{V}[0].modelKey",
            "plain path segments",
        ),
        (
            {
                "endpoints": [
                    {**CHURN, "variants": [{**CHAMPION, "scaling": {"minInstances": 3, "maxInstances": 2}}]}
                ]
            },
            f"{V}[0].scaling.maxInstances",
            "must be >= minInstances",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "initialInstanceCount": 9}]}]},
            f"{V}[0].initialInstanceCount",
            "between minInstances",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "instanceTypes": ["g5.xlarge"]}]}]},
            f"{V}[0].instanceTypes",
            "GPU type but the group's accelerator is 'cpu'",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "initialVariantWeight": "heavy"}]}]},
            f"{V}[0].initialVariantWeight",
            "expected a number",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "minSize": 1}]}]},
            f"{V}[0].minSize",
            "unknown key",
        ),
        (
            {"endpoints": [{**CHURN, "variants": [{**CHAMPION, "serverless": {"memorySizeInMB": 2048}}]}]},
            f"{V}[0].initialInstanceCount",
            "serverless variants have no instances",
        ),
        (
            {
                "endpoints": [
                    {
                        **CHURN,
                        "variants": [
                            {
                                "name": "sv",
                                "modelKey": CHAMPION["modelKey"],
                                "serverless": {"memorySizeInMb": 2048},
                            }
                        ],
                    }
                ]
            },
            f"{V}[0].serverless.memorySizeInMb",
            "unknown key",
        ),
        ({"endpoints": [{**CHURN, "variants": []}]}, V, "non-empty list"),
        (
            {"endpoints": [{**CHURN, "rollout": {"strategy": "blue-green"}}]},
            f"{E}.rollout.strategy",
            "must be one of",
        ),
        (
            {"endpoints": [{**CHURN, "rollout": {"canaryPercent": 100}}]},
            f"{E}.rollout.canaryPercent",
            "<= 99",
        ),
        ({"endpoints": [{**CHURN, "alarms": {"p99LatencyMs": 0}}]}, f"{E}.alarms.p99LatencyMs", ">= 1"),
        ({"endpoints": {"churn": CHURN}}, "selfmaker:endpoints", "expected a list"),
        (
            {"groups": [{**SERVE, "name": "churn-champion"}], "endpoints": [CHURN]},
            f"{V}[0].name",
            "also the name of a group",
        ),
        (
            {"endpoints": [CHURN], "gateway": {"scheme": "internet-facing", "allowedCidrs": ["0.0.0.0/0"]}},
            "selfmaker:gateway.certificateArn",
            "needs an ACM certificate",
        ),
        (
            {"endpoints": [CHURN], "gateway": {"scheme": "internet-facing", "certificateArn": CERT}},
            "selfmaker:gateway.allowedCidrs",
            "client CIDRs",
        ),
        (
            {"endpoints": [CHURN], "gateway": {"scheme": "public"}},
            "selfmaker:gateway.scheme",
            "must be one of",
        ),
        (
            {
                "endpoints": [CHURN],
                "gateway": {"certificateArn": "arn:aws:iam::123456789012:server-certificate/x"},
            },
            "selfmaker:gateway.certificateArn",
            "not an ACM certificate",
        ),
        (
            {
                "endpoints": [CHURN],
                "gateway": {"certificateArn": CERT, "sslPolicy": "ELBSecurityPolicy-2016-08"},
            },
            "selfmaker:gateway.sslPolicy",
            "older than 1.2",
        ),
        (
            {"endpoints": [CHURN], "gateway": {"allowedCidrs": ["10.0.0.1/8"]}},
            "selfmaker:gateway.allowedCidrs[0]",
            "host bits set",
        ),
        (
            {"endpoints": [CHURN], "gateway": {"trustStoreCaBundle": "s3://b-bucket/ca.pem"}},
            "selfmaker:gateway.trustStoreCaBundle",
            "needs HTTPS",
        ),
        ({"endpoints": [CHURN], "gateway": {"idle": 5}}, "selfmaker:gateway.idle", "unknown key"),
    ],
)
def test_endpoint_and_gateway_errors_name_the_key(values: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(stack_config.ConfigError) as err:
        build(**values)
    assert err.value.field == field
    assert message in str(err.value)
    assert str(err.value).startswith(f"{field}: ") and "\n" not in str(err.value)
