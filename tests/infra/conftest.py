"""Pulumi mocks for the infra tests: a recording mock that fails on any invoke it does not know.

Every resource registration is recorded with its type, logical name, resolved inputs and parent URN,
so tests assert on what would be sent to AWS rather than on the existence of Python objects.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
REGION = "us-east-1"
ZONES = ["us-east-1a", "us-east-1b", "us-east-1c"]
GPU_AMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
)
SSM_PARAMETERS = {
    "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64": "ami-0a1b2c3d4e5f60718",
    GPU_AMI_PARAMETER: "ami-0fedcba9876543210",
}


@dataclass
class Registration:
    """One registered resource: what the engine would have received."""

    type: str
    name: str
    inputs: dict[str, Any]
    urn: str
    parent: str
    custom: bool
    id: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    #: properties the engine is told to leave alone after creation (``ResourceOptions.ignore_changes``)
    ignore_changes: list[str] = field(default_factory=list)


class UnmockedInvokeError(AssertionError):
    """The program called a provider function the test mocks do not know."""


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers the invokes the program uses, records everything, refuses anything else."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.unmocked: list[str] = []
        self.created: dict[str, tuple[str, dict[str, Any]]] = {}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append((args.token, dict(args.args)))
        token = args.token
        if token == "aws:index/getRegion:getRegion":
            return {
                "region": REGION,
                "id": REGION,
                "endpoint": f"ec2.{REGION}.amazonaws.com",
                "description": "US East (N. Virginia)",
            }
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT,
                "arn": f"arn:aws:iam::{ACCOUNT}:user/ci",
                "id": ACCOUNT,
                "userId": "AIDATEST",
            }
        if token == "aws:index/getPartition:getPartition":
            return {
                "partition": "aws",
                "dnsSuffix": "amazonaws.com",
                "reverseDnsPrefix": "com.amazonaws",
                "id": "aws",
            }
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {
                "names": list(ZONES),
                "zoneIds": ["use1-az1", "use1-az2", "use1-az4"],
                "id": REGION,
                "groupNames": [REGION],
                "state": args.args.get("state"),
            }
        if token == "aws:ssm/getParameter:getParameter" and args.args.get("name") in SSM_PARAMETERS:
            name = args.args["name"]
            return {
                "name": name,
                "value": SSM_PARAMETERS[name],
                "insecureValue": SSM_PARAMETERS[name],
                "type": "String",
                "version": 1,
                "id": name,
                "withDecryption": True,
                "arn": f"arn:aws:ssm:{REGION}::parameter{name}",
            }
        self.unmocked.append(f"{token} {args.args}")
        raise UnmockedInvokeError(f"unmocked invoke {token} with {args.args}")

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        module = args.typ.split(":")[1].split("/")[0] if args.typ.startswith("aws:") else "x"
        rid = f"{args.name}-id"
        if args.typ == "aws:s3/bucket:Bucket":
            state["bucket"] = f"{args.name}-0a1b2c3".lower()
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
            rid = state["bucket"]
        elif args.typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{args.inputs['name']}"
            state["arn"] = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{args.inputs['name']}"
        elif args.typ == "aws:sqs/queue:Queue":
            state["url"] = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{args.name}"
            rid = state["url"]
        elif args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
        elif args.typ == "aws:lambda/function:Function":
            state["arn"] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{args.inputs.get('name', args.name)}"
            state["version"] = "1" if args.inputs.get("publish") else "$LATEST"
        elif args.typ == "aws:lambda/alias:Alias":
            state["arn"] = (
                f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{args.inputs['functionName']}:{args.inputs['name']}"
            )
        elif args.typ == "aws:lb/loadBalancer:LoadBalancer":
            state["arnSuffix"] = f"app/{args.name}/50dc6c495c0c9188"
            state["dnsName"] = f"internal-{args.name}-1234567890.{REGION}.elb.amazonaws.com"
        elif args.typ == "aws:lb/targetGroup:TargetGroup":
            state["arnSuffix"] = f"targetgroup/{args.name}/73e2d6bc24d8a067"
        elif module == "iam":
            state.setdefault(
                "arn", f"arn:aws:iam::{ACCOUNT}:{args.typ.rsplit(':', 1)[1].lower()}/{args.name}"
            )
        state.setdefault("arn", f"arn:aws:{module}:{REGION}:{ACCOUNT}:{args.name}")
        state.setdefault("name", args.name)
        self.created[args.name] = (args.typ, state)
        return rid, state


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, plus a record of each registration's parent (the mocks API does not pass it)."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            registered = self.resources[response.urn]
            self.registrations.append(
                Registration(
                    type=request.type,
                    name=request.name,
                    inputs=rpc.deserialize_properties(request.object),
                    urn=response.urn,
                    parent=request.parent,
                    custom=bool(request.custom),
                    id=registered.id,
                    state=registered.state,
                    ignore_changes=list(request.ignoreChanges),
                )
            )
        return response


@dataclass
class PulumiHarness:
    """What a test gets: run a program under mocks, then inspect the recorded resources."""

    mocks: RecordingMocks
    monitor: RecordingMonitor

    def run(self, program: Callable[[], Any]) -> list[Registration]:
        """Run ``program`` to completion (all outputs resolved) and return every registration."""

        @pulumi.runtime.test
        def _run() -> Any:
            return program()

        _run()
        assert not self.mocks.unmocked, f"unmocked invokes: {self.mocks.unmocked}"
        return list(self.monitor.registrations)

    def of_type(self, type_token: str) -> list[Registration]:
        """Registrations of one resource type."""
        return [r for r in self.monitor.registrations if r.type == type_token]

    def named(self, name: str) -> Registration:
        """The single registration with this logical name."""
        found = [r for r in self.monitor.registrations if r.name == name]
        assert len(found) == 1, f"{name}: {len(found)} registrations"
        return found[0]


def stack_file_config(path: Path) -> dict[str, str]:
    """The ``config:`` of a stack file as the engine hands it to the program (strings; objects as JSON)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["config"]
    out: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, (dict, list)):
            out[key] = json.dumps(value)
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = str(value)
    return out


def new_harness() -> PulumiHarness:
    """Install fresh recording mocks (project ``selfmaker``, stack ``dev``) with an empty stack config."""
    from pulumi.runtime import config as runtime_config

    mocks = RecordingMocks()
    monitor = RecordingMonitor(mocks)
    runtime_config.set_all_config({})
    pulumi.runtime.set_mocks(mocks, project="selfmaker", stack="dev", preview=False, monitor=monitor)
    return PulumiHarness(mocks, monitor)


@pytest.fixture(autouse=True)
def _event_loop_for_pulumi() -> Iterator[None]:
    """Pulumi's SDK creates futures on the thread's current event loop.

    A test elsewhere in the session that used ``asyncio.run()`` leaves the main thread's policy refusing
    to make one (get_event_loop() raises), so start from a fresh default policy, which behaves as in a
    new process.
    """
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop_policy(None)
        loop = asyncio.get_event_loop_policy().get_event_loop()
    yield
    # Close the loop the test used: left open, it is collected later, in whatever test runs then on this
    # pytest-xdist worker, and fails that test with "unclosed event loop" (and its self-pipe sockets).
    # A fresh policy makes the next get_event_loop() (a module fixture's, the next test's) create one again.
    if not loop.is_running():
        loop.close()
        asyncio.set_event_loop_policy(None)


@pytest.fixture
def pulumi_harness() -> Iterator[PulumiHarness]:
    """Fresh recording mocks for one test; the stack config is emptied before and after."""
    from pulumi.runtime import config as runtime_config

    try:
        yield new_harness()
    finally:
        runtime_config.set_all_config({})


@pytest.fixture(scope="module")
def dev_run() -> Iterator[PulumiHarness]:
    """The whole program run once per module with the example stack file (``Pulumi.dev.yaml``)."""
    from pulumi.runtime import config as runtime_config

    from infra import program

    harness = new_harness()
    try:
        runtime_config.set_all_config(stack_file_config(ROOT / "Pulumi.dev.yaml"))
        harness.run(program.main)
        yield harness
    finally:
        runtime_config.set_all_config({})


@pytest.fixture
def dev_stack_config() -> dict[str, str]:
    """The example stack file's config, as strings."""
    return stack_file_config(ROOT / "Pulumi.dev.yaml")


#: Warnings the Pulumi SDKs raise on our behalf; each is ignored only for the tests in this directory.
PULUMI_WARNINGS = (
    # pulumi_aws modules deprecate classes we never use while the (lazily imported) module loads.
    r"ignore:[\w/.]+ has been deprecated in favor of [\w/.]+:DeprecationWarning",
    # Pulumi's mock runtime makes event loops (and gRPC sockets) it never closes; when the collector
    # happens to reclaim one during a test, its __del__ warns. Nothing of ours leaks there.
    r"ignore:Exception ignored in. <function BaseEventLoop.__del__:pytest.PytestUnraisableExceptionWarning",
    r"ignore:unclosed event loop:ResourceWarning",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Apply :data:`PULUMI_WARNINGS` to the infra tests only."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            for spec in PULUMI_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))
