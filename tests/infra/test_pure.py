"""Pure helpers: CIDR plans, names and tags, presets and the capacity mix, policy documents."""

from __future__ import annotations

import ipaddress
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra import cidr, naming, policies, presets

# --- CIDR -------------------------------------------------------------------------------------------


@st.composite
def vpc_and_azs(draw: st.DrawFn) -> tuple[str, int]:
    prefix = draw(st.integers(min_value=16, max_value=24))
    base = draw(st.integers(min_value=0, max_value=2**32 - 1))
    network = ipaddress.IPv4Network((base, prefix), strict=False)
    return str(network), draw(st.integers(min_value=1, max_value=6))


@given(vpc_and_azs())
@settings(max_examples=150, deadline=None)
def test_subnet_plan_is_disjoint_inside_the_vpc_and_one_pair_per_az(case: tuple[str, int]) -> None:
    vpc_cidr, azs = case
    try:
        plan = cidr.plan_subnets(vpc_cidr, azs)
    except ValueError as exc:
        assert "too small" in str(exc)
        bits = (azs - 1).bit_length()
        assert ipaddress.IPv4Network(vpc_cidr).prefixlen + 3 + bits > cidr.MAX_SUBNET_PREFIX
        return
    vpc = ipaddress.IPv4Network(vpc_cidr)
    nets = [ipaddress.IPv4Network(c) for c in plan.public + plan.private]
    assert len(plan.public) == len(plan.private) == azs
    assert all(n.subnet_of(vpc) for n in nets)
    assert all(not a.overlaps(b) for a, b in itertools.combinations(nets, 2))
    assert all(n.prefixlen <= cidr.MAX_SUBNET_PREFIX for n in nets)
    public, private = (ipaddress.IPv4Network(plan.public[0]), ipaddress.IPv4Network(plan.private[0]))
    assert private.num_addresses == 4 * public.num_addresses
    assert cidr.plan_subnets(vpc_cidr, azs) == plan  # deterministic


def test_subnet_plan_of_a_slash_16_over_two_azs() -> None:
    plan = cidr.plan_subnets("10.0.0.0/16", 2)
    assert plan.private == ("10.0.0.0/18", "10.0.64.0/18")
    assert plan.public == ("10.0.128.0/20", "10.0.144.0/20")


@pytest.mark.parametrize(
    ("vpc", "azs", "message"),
    [
        ("10.0.0.1/16", 2, "not an IPv4 network"),
        ("10.0.0.0/8", 2, "at most /16"),
        ("10.0.0.0/26", 2, "too small"),
        ("banana", 2, "not an IPv4 network"),
        ("10.0.0.0/16", 0, "az_count"),
    ],
)
def test_subnet_plan_rejects_bad_blocks(vpc: str, azs: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cidr.plan_subnets(vpc, azs)


# --- names and tags ---------------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=80))
def test_slug_is_always_a_clean_name_or_an_error(value: str) -> None:
    try:
        out = naming.slug(value)
    except ValueError:
        assert not any(c.isascii() and c.isalnum() for c in value.lower())
        return
    assert out and len(out) <= 40
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert not out.startswith("-") and not out.endswith("-") and "--" not in out


def test_resource_prefix_and_child_names() -> None:
    assert naming.resource_prefix("selfmaker", "dev") == "selfmaker-dev"
    assert naming.resource_prefix("Self Maker", "Prod_EU") == "self-maker-prod-eu"
    assert len(naming.resource_prefix("selfmaker", "x" * 100)) == 32
    assert naming.child_name("network", "vpc") == "network-vpc"
    with pytest.raises(ValueError):
        naming.child_name("", "vpc")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("serve-cpu", True),
        ("a1", True),
        ("Serve", False),
        ("1abc", False),
        ("x", False),
        ("ends-", False),
        ("a" * 33, False),
    ],
)
def test_group_names(name: str, ok: bool) -> None:
    assert naming.valid_group_name(name) is ok


def test_standard_tags_merge_and_refuse_overrides() -> None:
    tags = naming.standard_tags("selfmaker", "dev", {"Owner": "ml"})
    assert tags == {"Project": "selfmaker", "Stack": "dev", "ManagedBy": "pulumi", "Owner": "ml"}
    with pytest.raises(ValueError, match="cannot be overridden"):
        naming.standard_tags("selfmaker", "dev", {"Stack": "prod"})
    with pytest.raises(ValueError, match="reserved"):
        naming.standard_tags("selfmaker", "dev", {"aws:foo": "x"})
    with pytest.raises(ValueError, match="1-128"):
        naming.standard_tags("selfmaker", "dev", {"k": "v" * 257})


def test_uris_and_prefixes() -> None:
    assert naming.s3_uri("my-bucket", "/models/a.tar.gz") == "s3://my-bucket/models/a.tar.gz"
    with pytest.raises(ValueError):
        naming.s3_uri("My_Bucket", "k")
    repo = "123456789012.dkr.ecr.us-east-1.amazonaws.com/selfmaker-dev/serving"
    assert naming.image_uri(repo, "0.1.0") == repo + ":0.1.0"
    assert naming.registry_host(repo) == "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    with pytest.raises(ValueError):
        naming.image_uri(repo, "bad tag")
    assert naming.normalize_key_prefix("/models") == "models/"
    assert naming.normalize_key_prefix("a/b//") == "a/b/"
    assert naming.normalize_key_prefix(" ") == ""
    assert naming.log_group_name("selfmaker-dev", "serve-cpu") == "/selfmaker-dev/serve-cpu"
    assert (
        naming.prefixed_arn_pattern("aws", "sqs", "eu-west-1", "1" * 12, "p")
        == "arn:aws:sqs:eu-west-1:111111111111:p-*"
    )


# --- presets and capacity ---------------------------------------------------------------------------


def test_presets_match_their_accelerator() -> None:
    for name, types in presets.CPU_PRESETS.items():
        assert presets.resolve_instance_types("cpu", name, None) == types
        assert {presets.instance_family(t) for t in types} == {"c5", "c6i", "m5"}
    for name, types in presets.GPU_PRESETS.items():
        assert presets.resolve_instance_types("gpu", name, None) == types
        assert all(presets.is_gpu_type(t) for t in types)
    families = {presets.instance_family(t) for types in presets.GPU_PRESETS.values() for t in types}
    assert {"g4dn", "g5", "p3"} <= families


def test_instance_type_resolution_errors() -> None:
    assert presets.resolve_instance_types("cpu", None, None) == presets.CPU_PRESETS["cpu-small"]
    assert presets.resolve_instance_types("gpu", "cpu-small", ["g5.xlarge"]) == ("g5.xlarge",)
    with pytest.raises(ValueError, match="unknown gpu preset 'cpu-small'"):
        presets.resolve_instance_types("gpu", "cpu-small", None)
    with pytest.raises(ValueError, match="g4dn.xlarge is a GPU type"):
        presets.resolve_instance_types("cpu", None, ["c5.large", "g4dn.xlarge"])
    with pytest.raises(ValueError, match="m5.large is a CPU-only type"):
        presets.resolve_instance_types("gpu", None, ["m5.large"])
    with pytest.raises(ValueError, match="repeat"):
        presets.resolve_instance_types("cpu", None, ["m5.large", "m5.large"])
    with pytest.raises(ValueError, match="not an EC2 instance type"):
        presets.resolve_instance_types("cpu", None, ["m5"])
    with pytest.raises(ValueError, match="accelerator"):
        presets.resolve_instance_types("tpu", None, None)


@given(st.integers(0, 500), st.integers(0, 500), st.integers(0, 100))
def test_capacity_mix_adds_up_and_favours_on_demand(desired: int, base: int, spot: int) -> None:
    mix = presets.capacity_mix(desired, base, spot)
    assert mix.on_demand + mix.spot == desired
    assert mix.on_demand >= min(base, desired)
    above = desired - min(base, desired)
    assert mix.spot <= above * spot / 100 + 1e-9  # rounding never favours spot
    assert above * spot / 100 - mix.spot < 1
    if spot == 0:
        assert mix.spot == 0
    if spot == 100:
        assert mix.on_demand == min(base, desired)


@pytest.mark.parametrize(
    ("desired", "base", "spot", "expected"),
    [(4, 1, 50, (3, 1)), (10, 0, 70, (3, 7)), (3, 5, 100, (3, 0)), (1, 0, 50, (1, 0))],
)
def test_capacity_mix_examples(desired: int, base: int, spot: int, expected: tuple[int, int]) -> None:
    mix = presets.capacity_mix(desired, base, spot)
    assert (mix.on_demand, mix.spot) == expected


def test_instances_distribution_block() -> None:
    assert presets.instances_distribution(1, 70) == {
        "on_demand_base_capacity": 1,
        "on_demand_percentage_above_base_capacity": 30,
        "on_demand_allocation_strategy": "prioritized",
        "spot_allocation_strategy": "price-capacity-optimized",
    }
    with pytest.raises(ValueError, match="spot_percentage"):
        presets.instances_distribution(0, 101)


# --- policy documents -------------------------------------------------------------------------------

SCOPE = policies.RoleScope(
    models_bucket_arn="arn:aws:s3:::models-b",
    data_bucket_arn="arn:aws:s3:::data-b",
    outputs_bucket_arn="arn:aws:s3:::outputs-b",
    repository_arns=("arn:aws:ecr:us-east-1:123456789012:repository/p/serving",),
    log_group_pattern="arn:aws:logs:us-east-1:123456789012:log-group:/p/*",
    queue_pattern="arn:aws:sqs:us-east-1:123456789012:p-*",
    topic_pattern="arn:aws:sns:us-east-1:123456789012:p-*",
    kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/k",
)
JOB_SCOPE = policies.JobScope(
    models_bucket_arn="arn:aws:s3:::models-b",
    data_bucket_arn="arn:aws:s3:::data-b",
    outputs_bucket_arn="arn:aws:s3:::outputs-b",
    repository_arns=("arn:aws:ecr:us-east-1:123456789012:repository/p/training",),
    log_group_arn="arn:aws:logs:us-east-1:123456789012:log-group:/p/jobs",
    cluster_pattern="arn:aws:ecs:us-east-1:123456789012:cluster/AWSBatch-p-*",
    container_instance_pattern="arn:aws:ecs:us-east-1:123456789012:container-instance/AWSBatch-p-*",
    kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/k",
)


def _actions_on(doc: policies.Document, resource_prefix: str) -> set[str]:
    found: set[str] = set()
    for stmt in doc["Statement"]:
        resources = stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
        if any(r.startswith(resource_prefix) for r in resources):
            actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            found |= set(actions)
    return found


@pytest.mark.parametrize(
    ("builder", "scope"),
    [
        (policies.serving_policy, SCOPE),
        (policies.async_worker_policy, SCOPE),
        (policies.batch_job_policy, JOB_SCOPE),
    ],
)
def test_role_documents_are_valid_json_without_wildcards(builder: object, scope: object) -> None:
    doc = builder(scope)  # type: ignore[operator]
    assert json.loads(json.dumps(doc)) == doc and doc["Version"] == "2012-10-17"
    assert policies.wildcard_violations(doc) == []
    sids = [s["Sid"] for s in doc["Statement"]]
    assert len(sids) == len(set(sids))
    assert _actions_on(doc, "arn:aws:kms") == {"kms:Decrypt", "kms:GenerateDataKey"}


def test_serving_reads_only_the_model_prefix() -> None:
    doc = policies.serving_policy(SCOPE)
    assert _actions_on(doc, "arn:aws:s3:::models-b/models/") == {"s3:GetObject", "s3:GetObjectVersion"}
    assert not _actions_on(doc, "arn:aws:s3:::data-b") and not _actions_on(doc, "arn:aws:s3:::outputs-b")
    listing = next(s for s in doc["Statement"] if s["Action"] == "s3:ListBucket")
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["models/*"]}}


def test_batch_jobs_read_data_and_models_and_write_outputs_checkpoints_and_state() -> None:
    doc = policies.batch_job_policy(JOB_SCOPE)
    assert "s3:PutObject" not in _actions_on(doc, "arn:aws:s3:::data-b")
    assert "s3:GetObject" in _actions_on(doc, "arn:aws:s3:::data-b/")
    assert _actions_on(doc, "arn:aws:s3:::models-b/models/") == {"s3:GetObject", "s3:GetObjectVersion"}
    assert {"s3:PutObject", "s3:GetObject", "s3:DeleteObject"} <= _actions_on(doc, "arn:aws:s3:::outputs-b/")
    assert "ecs:RegisterContainerInstance" not in json.dumps(doc)  # the agent's rights are the instance's
    assert _actions_on(doc, "arn:aws:logs:") == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:DescribeLogStreams",
    }


def test_batch_instances_run_the_ecs_agent_in_the_stack_clusters_only() -> None:
    doc = policies.batch_instance_policy(JOB_SCOPE)
    assert policies.wildcard_violations(doc) == []
    agent = _actions_on(doc, "arn:aws:ecs:us-east-1:123456789012:cluster/AWSBatch-p-")
    assert "ecs:RegisterContainerInstance" in agent and "ecs:SubmitTaskStateChange" in agent
    unscoped = [st for st in doc["Statement"] if st["Resource"] == "*"]
    assert {st["Action"] if isinstance(st["Action"], str) else tuple(st["Action"]) for st in unscoped} == {
        "ecs:DiscoverPollEndpoint",
        "ecr:GetAuthorizationToken",
    }
    assert not _actions_on(doc, "arn:aws:s3:::")  # data access is the job role's
    assert _actions_on(doc, "arn:aws:ecr:") == set(policies.ECR_PULL_ACTIONS)


def test_async_workers_use_the_stack_queues_and_topics() -> None:
    doc = policies.async_worker_policy(SCOPE)
    assert "sqs:ReceiveMessage" in _actions_on(doc, "arn:aws:sqs:us-east-1:123456789012:p-")
    assert _actions_on(doc, "arn:aws:sns:") == {"sns:Publish"}


def test_s3_managed_keys_need_no_kms_statement() -> None:
    from dataclasses import replace

    doc = policies.serving_policy(replace(SCOPE, kms_key_arn=None))
    assert not _actions_on(doc, "arn:aws:kms")


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ({"Effect": "Allow", "Action": "*", "Resource": "*"}, "wildcard action '*'"),
        ({"Effect": "Allow", "Action": ["s3:*"], "Resource": "arn:aws:s3:::b"}, "wildcard action 's3:*'"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}, "['s3:GetObject'] on Resource '*'"),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, "NotAction"),
    ],
)
def test_wildcard_checker_catches_broad_grants(statement: dict[str, object], problem: str) -> None:
    problems = policies.wildcard_violations(policies.document(statement))
    assert any(problem in p for p in problems), problems


def test_wildcard_checker_allows_unscoped_only_actions_and_denies() -> None:
    doc = policies.document(
        {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*"},
    )
    assert policies.wildcard_violations(doc) == []


def test_tls_only_bucket_policy_denies_plain_http_and_old_tls() -> None:
    doc = policies.tls_only_bucket_policy("arn:aws:s3:::b")
    conditions = [s["Condition"] for s in doc["Statement"]]
    assert {"Bool": {"aws:SecureTransport": "false"}} in conditions
    assert {"NumericLessThan": {"s3:TlsVersion": "1.2"}} in conditions
    assert all(
        s["Effect"] == "Deny" and s["Resource"] == ["arn:aws:s3:::b", "arn:aws:s3:::b/*"]
        for s in doc["Statement"]
    )


def test_ecr_lifecycle_keeps_the_last_n_and_orders_the_any_rule_last() -> None:
    rules = policies.ecr_lifecycle_policy(5)["rules"]
    assert [r["rulePriority"] for r in rules] == [1, 2]
    assert rules[-1]["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 5}
    with pytest.raises(ValueError):
        policies.ecr_lifecycle_policy(0)


def test_flow_logs_policy_is_scoped_to_its_log_group() -> None:
    doc = policies.flow_logs_policy("arn:aws:logs:us-east-1:1:log-group:fl")
    assert doc["Statement"][0]["Resource"] == [
        "arn:aws:logs:us-east-1:1:log-group:fl",
        "arn:aws:logs:us-east-1:1:log-group:fl:*",
    ]
    assert policies.wildcard_violations(doc) == []
