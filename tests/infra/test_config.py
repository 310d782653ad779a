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
    cfg = build(azCount="3", flowLogs="false", interfaceEndpoints="True", keepImages=" 7 ", modelPrefix="/artifacts")
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
    group = {**GPU_SERVE, "instanceTypes": ["p3.2xlarge"], "minSize": "1", "maxSize": 3, "desiredCapacity": 2,
             "spotPercentage": 100, "environment": {"LOG_LEVEL": "20"}, "imageTag": "v2"}
    (g,) = build(groups=[group]).groups
    assert g.instance_types == ("p3.2xlarge",) and (g.min_size, g.max_size, g.desired_capacity) == (1, 3, 2)
    assert g.capacity_rebalance is True  # spot groups rebalance by default
    assert g.image_tag == "v2" and g.environment == {"LOG_LEVEL": "20"}


def test_jobs_defaults_and_values() -> None:
    assert build().jobs is None  # no selfmaker:jobs, no AWS Batch
    cfg = build(jobs={"environments": [{"name": "cpu"}, {"name": "gpu", "accelerator": "gpu", "spot": "true",
                                                        "onDemand": False, "maxVcpus": "32", "vcpus": 8}],
                      "retryAttempts": "5"})
    assert cfg.jobs is not None and cfg.jobs.retry_attempts == 5
    cpu, gpu = cfg.jobs.environments
    assert (cpu.on_demand, cpu.spot, cpu.vcpus, cpu.memory_mib, cpu.gpus) == (True, False, 4, 7000, 0)
    assert cpu.instance_types == ("c5.large", "c6i.large", "m5.large") and cpu.image_tag == "0.1.0"
    assert (gpu.on_demand, gpu.spot, gpu.max_vcpus, gpu.vcpus, gpu.gpus) == (False, True, 32, 8, 1)
    assert gpu.image_tag == "0.1.0-gpu" and gpu.root_volume_gb == 100


def test_warm_pool() -> None:
    group = {**SERVE, "instanceTypes": ["m5.large"], "maxSize": 2, "warmPool": {"minSize": 1, "state": "Running"}}
    (g,) = build(groups=[group]).groups
    assert g.warm_pool == stack_config.WarmPoolConfig(min_size=1, max_prepared_capacity=None, state="Running")
    (g,) = build(groups=[{**group, "warmPool": True}]).groups
    assert g.warm_pool == stack_config.WarmPoolConfig(0, None, "Stopped")


G = "selfmaker:groups[0]"


@pytest.mark.parametrize(("values", "field", "message"), [
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
    ({"groups": [{**SERVE, "warmPool": {"minSize": 1}, "spotPercentage": 50, "instanceTypes": ["m5.large"]}]},
     f"{G}.warmPool", "spot"),
    ({"groups": [{**SERVE, "warmPool": {"minSize": 1}}]}, f"{G}.warmPool", "exactly one instance type"),
    ({"groups": [{**SERVE, "warmPool": {"size": 1}}]}, f"{G}.warmPool.size", "unknown key"),
    ({"groups": [{**SERVE, "warmPool": {"state": "Frozen"}, "instanceTypes": ["m5.large"]}]},
     f"{G}.warmPool.state", "must be one of"),
    ({"groups": [{**SERVE, "amiId": "ubuntu"}]}, f"{G}.amiId", "not an AMI id"),
    ({"groups": [{**SERVE, "amiId": "ami-0123456789abcdef0", "amiParameter": "/x"}]}, f"{G}.amiParameter", "not both"),
    ({"groups": [{**SERVE, "amiParameter": "aws/service/x"}]}, f"{G}.amiParameter", "SSM parameter"),
    ({"groups": [{**SERVE, "rootVolumeGb": 4}]}, f"{G}.rootVolumeGb", ">= 8"),
    ({"groups": [{**SERVE, "port": 80}]}, f"{G}.port", ">= 1024"),
    ({"groups": [{**SERVE, "environment": {"bad-name": "1"}}]}, f"{G}.environment.bad-name", "environment variable"),
    ({"groups": [{**SERVE, "environment": {"A": {"nested": 1}}}]}, f"{G}.environment.A", "string"),
    ({"groups": [{**SERVE, "environment": {"AWS_REGION": "x"}}]}, f"{G}.environment.AWS_REGION", "set by selfmaker"),
    ({"groups": [{"name": "serve-cpu", "role": "serve"}]}, f"{G}.modelKey", "non-empty string"),
    ({"groups": [{**SERVE, "modelKey": "models/m/model.onnx"}]}, f"{G}.modelKey", "model.tar.gz"),
    ({"groups": [{**SERVE, "modelKey": "other/m.tar.gz"}]}, f"{G}.modelKey", "outside modelPrefix"),
    ({"groups": [{**SERVE, "channels": {"train": "x/"}}]}, f"{G}.channels", "unknown key"),
    ({"groups": [{"name": "train-gpu", "role": "train"}]}, f"{G}.role", "replaced by AWS Batch job queues"),
    ({"groups": ["serve"]}, "selfmaker:groups[0]", "expected a mapping"),
    ({"groups": [SERVE, {**GPU_SERVE, "name": "serve-cpu"}]}, "selfmaker:groups[1].name", "duplicate"),
    ({"jobs": []}, "selfmaker:jobs", "expected a mapping"),
    ({"jobs": {"queues": []}}, "selfmaker:jobs.queues", "unknown key"),
    ({"jobs": {"environments": []}}, "selfmaker:jobs.environments", "non-empty list"),
    ({"jobs": {"environments": [{"name": "Cpu"}]}}, "selfmaker:jobs.environments[0].name", "2-24 characters"),
    ({"jobs": {"environments": [{"name": "cpu", "gpus": 1}]}}, "selfmaker:jobs.environments[0].gpus", "no GPUs"),
    ({"jobs": {"environments": [{"name": "cpu", "onDemand": False}]}}, "selfmaker:jobs.environments[0].onDemand",
     "on-demand or spot"),
    ({"jobs": {"environments": [{"name": "cpu", "vcpus": 8, "maxVcpus": 4}]}},
     "selfmaker:jobs.environments[0].maxVcpus", ">= vcpus"),
    ({"jobs": {"environments": [{"name": "cpu"}, {"name": "cpu"}]}}, "selfmaker:jobs.environments[1].name",
     "duplicate"),
    ({"jobs": {"environments": [{"name": "gpu", "accelerator": "gpu", "instanceTypes": ["c5.large"]}]}},
     "selfmaker:jobs.environments[0].instanceTypes", ""),
    ({"jobs": {"environments": [{"name": "cpu"}], "retryAttempts": 0}}, "selfmaker:jobs.retryAttempts", ">= 1"),
])
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
    values = {"imageTag": "1", "groups": '[{"name": "serve-cpu", "role": "serve", "modelKey": "models/a.tar.gz"}]',
              "tags": '{"Team": "ml"}', "azCount": "3"}
    cfg = stack_config.load(FakeConfig(values), project="selfmaker", stack="prod", present_keys=list(values))
    assert cfg.groups[0].name == "serve-cpu" and cfg.tags["Team"] == "ml" and cfg.network.az_count == 3
    with pytest.raises(stack_config.ConfigError, match=r"^selfmaker:azcount: unknown key"):
        stack_config.load(FakeConfig(values), project="selfmaker", stack="prod", present_keys=[*values, "azcount"])
    with pytest.raises(stack_config.ConfigError, match=r"^selfmaker:tags: not valid structured config"):
        stack_config.load(FakeConfig({**values, "tags": "{oops"}), project="selfmaker", stack="prod")

SIZES = st.one_of(st.none(), st.integers(-2, 12))


@given(SIZES, SIZES, SIZES, SIZES, st.one_of(st.none(), st.integers(-5, 110)))
def test_group_sizes_are_consistent_or_rejected_by_name(min_size: int | None, max_size: int | None,
                                                        desired: int | None, base: int | None,
                                                        spot: int | None) -> None:
    raw = {"minSize": min_size, "maxSize": max_size, "desiredCapacity": desired, "onDemandBase": base,
           "spotPercentage": spot}
    group = {**SERVE, **{k: v for k, v in raw.items() if v is not None}}
    try:
        (g,) = build(groups=[group]).groups
    except stack_config.ConfigError as err:
        assert err.field.removeprefix(f"{G}.") in raw
        return
    assert 0 <= g.min_size <= g.desired_capacity <= g.max_size and g.max_size >= 1
    assert 0 <= g.on_demand_base <= g.max_size and 0 <= g.spot_percentage <= 100
