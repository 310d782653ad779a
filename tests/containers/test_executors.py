"""The container executors on their own, with the tiny BYOC image (flask serve + train from apt).

Serving: selfmaker.executors.container.ContainerExecutor (the platform's interface) -- model dir mounted
read-only at /opt/ml/model, `serve`, the Model's Environment, a free 127.0.0.1 port, logs, stop by id.
Training: training.executors.container.ContainerExecutor through the real TrainingJobRunner -- /opt/ml
mounted, `train`, metrics, failure file, model.tar.gz, StopTrainingJob.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from containers_helpers import containers_with_label, wait_until

from selfmaker.executors.base import ExecutorError, InstanceSpec
from selfmaker.executors.container import ContainerExecutor
from selfmaker.settings import PlatformSettings
from training.executors import container as training_container
from training.runner import TrainingJobRunner

# the first test also builds the debootstrap base and the BYOC image (~2 min on 2 cores)
pytestmark = pytest.mark.timeout(900)


def _spec(tmp_path: Path, image: str, model: dict[str, Any] | None, **kw: Any) -> InstanceSpec:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    if model is not None:
        (model_dir / "model.json").write_text(json.dumps(model))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return InstanceSpec(
        instance_id=kw.pop("instance_id", "ep-AllTraffic-test1"),
        endpoint_name="ep",
        variant_name="AllTraffic",
        model_name="m",
        image=image,
        model_dir=model_dir,
        work_dir=work,
        log_path=tmp_path / "logs" / "instance.log",
        **kw,
    )


async def _wait_ping(handle: Any, timeout: float = 60.0) -> None:
    """Poll /ping (in a thread: requests blocks) until 200, failing at once if the container exited."""
    loop_deadline = asyncio.get_running_loop().time() + timeout
    last = "no answer"
    while asyncio.get_running_loop().time() < loop_deadline:
        if not handle.alive():
            raise AssertionError(f"container exited before /ping answered ({last})")
        try:
            resp = await asyncio.to_thread(requests.get, handle.url + "/ping", timeout=2)
            if resp.status_code == 200:
                return
            last = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            last = repr(exc)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.url}/ping not ready after {timeout}s: {last}")


def test_serving_byoc_container(engine: str, byoc_image: str, tmp_path: Path) -> None:
    settings = PlatformSettings(home=tmp_path / "home")
    spec = _spec(
        tmp_path,
        byoc_image,
        {"weights": [2.0, -1.0], "bias": 0.5},
        environment={"BYOC_GREETING": "hello from the Model's Environment"},
    )

    async def scenario() -> None:
        executor = ContainerExecutor(settings)
        handle = await executor.start(spec)
        try:
            assert handle.url.startswith("http://127.0.0.1:")
            await _wait_ping(handle)
            resp = await asyncio.to_thread(
                requests.post,
                handle.url + "/invocations",
                data="1,2\n3,-4\n",
                headers={"Content-Type": "text/csv"},
                timeout=10,
            )
            assert resp.status_code == 200, resp.text
            assert [float(v) for v in resp.text.split()] == [2 * 1 - 2 + 0.5, 2 * 3 + 4 + 0.5]
            bad = await asyncio.to_thread(
                requests.post,
                handle.url + "/invocations",
                data="{}",
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
            assert bad.status_code == 415
            facts = handle.describe()
            assert facts["executor"] == "container" and facts["container_id"]
            assert containers_with_label(engine, f"selfmaker.instance={spec.instance_id}")
        finally:
            await handle.stop(5)
        assert not handle.alive()
        assert containers_with_label(engine, f"selfmaker.instance={spec.instance_id}") == []
        await handle.stop(5)  # idempotent

    asyncio.run(scenario())
    log = spec.log_path.read_text()
    assert "byoc serve: listening on 8080" in log  # the container port; the host port is mapped to it
    assert "BYOC_GREETING=hello from the Model's Environment" in log


def test_serving_model_dir_is_read_only_and_crash_is_seen(
    engine: str, byoc_image: str, tmp_path: Path
) -> None:
    """No model.json: the server dies at start; alive() turns False and the traceback is in the log."""
    spec = _spec(tmp_path, byoc_image, None, instance_id="ep-AllTraffic-crash")

    async def scenario() -> None:
        handle = await ContainerExecutor(PlatformSettings(home=tmp_path / "home")).start(spec)
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while handle.alive() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            assert not handle.alive()
        finally:
            await handle.stop(1)

    asyncio.run(scenario())
    assert "model.json" in spec.log_path.read_text()
    assert containers_with_label(engine, "selfmaker.instance=ep-AllTraffic-crash") == []


def test_serving_missing_image_is_a_clear_error(engine: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "localhost/no-such-image-selfmaker-test:never", {"weights": [], "bias": 0})

    async def scenario() -> None:
        with pytest.raises(ExecutorError, match="no-such-image-selfmaker-test"):
            await ContainerExecutor(PlatformSettings(home=tmp_path / "home")).start(spec)

    asyncio.run(scenario())


def test_serving_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets stay off the command line; bind port / memory / network options map as documented."""
    spec = _spec(
        tmp_path,
        "example/byoc:1",
        None,
        environment={"SECRET": "s3cr3t", "SAGEMAKER_BIND_TO_PORT": "9000"},
        memory_mb=2048,
    )
    bridge = ContainerExecutor(PlatformSettings(home=tmp_path))
    cmd = bridge.command(spec, "podman", "n", tmp_path / "cid", 41234)
    assert "s3cr3t" not in " ".join(cmd) and cmd[cmd.index("SECRET") - 1 : cmd.index("SECRET") + 1] == [
        "-e",
        "SECRET",
    ]
    assert "127.0.0.1:41234:9000" in cmd and "--memory" in cmd and cmd[-2:] == ["example/byoc:1", "serve"]
    assert f"{spec.model_dir.resolve()}:/opt/ml/model:ro" in cmd
    monkeypatch.setenv("SELFMAKER_CONTAINER_NETWORK", "host")
    host = ContainerExecutor(PlatformSettings(home=tmp_path))
    assert host.container_environment(spec, 41234)["SAGEMAKER_BIND_TO_PORT"] == "41234"
    assert "--network" in host.command(spec, "podman", "n", tmp_path / "cid", 41234)
    monkeypatch.setenv("SELFMAKER_CONTAINER_NETWORK", "overlay")
    with pytest.raises(ExecutorError, match="SELFMAKER_CONTAINER_NETWORK"):
        ContainerExecutor(PlatformSettings(home=tmp_path))


@pytest.mark.parametrize(
    ("engine", "flags"),
    [("/usr/bin/docker", ["--gpus", "all"]), ("/usr/bin/podman", ["--device", "nvidia.com/gpu=all"])],
)
def test_serving_command_line_gpu_instance_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str, flags: list[str]
) -> None:
    """ml.g*/ml.p* instances get the host's GPUs (docker --gpus, podman CDI) when it has one; CPU types
    never."""
    monkeypatch.delenv("SELFMAKER_CONTAINER_GPUS", raising=False)
    executor = ContainerExecutor(PlatformSettings(home=tmp_path))
    executor.host_has_gpu = True
    gpu = _spec(tmp_path, "example/byoc:1", None, instance_type="ml.g5.xlarge")
    cmd = executor.command(gpu, engine, "n", tmp_path / "cid", 41234)
    at = cmd.index(flags[0])
    assert (
        cmd[at : at + 2] == flags and cmd.index("example/byoc:1") > at
    )  # an engine option, before the image
    cpu = _spec(tmp_path, "example/byoc:1", None, instance_type="ml.m5.large")
    assert flags[0] not in executor.command(cpu, engine, "n", tmp_path / "cid", 41234)
    serverless = _spec(tmp_path, "example/byoc:1", None, instance_type=None, memory_mb=2048)
    assert flags[0] not in executor.command(serverless, engine, "n", tmp_path / "cid", 41234)
    executor.host_has_gpu = False  # auto: a GPU type still runs (on the CPU) where the host has no GPU
    assert flags[0] not in executor.command(gpu, engine, "n", tmp_path / "cid", 41234)
    monkeypatch.setenv("SELFMAKER_CONTAINER_GPUS", "always")
    always = ContainerExecutor(PlatformSettings(home=tmp_path))
    always.host_has_gpu = False
    assert flags[0] in always.command(gpu, engine, "n", tmp_path / "cid", 41234)
    monkeypatch.setenv("SELFMAKER_CONTAINER_GPUS", "never")
    never = ContainerExecutor(PlatformSettings(home=tmp_path))
    never.host_has_gpu = True
    assert flags[0] not in never.command(gpu, engine, "n", tmp_path / "cid", 41234)
    monkeypatch.setenv("SELFMAKER_CONTAINER_GPUS", "sometimes")
    with pytest.raises(ExecutorError, match="SELFMAKER_CONTAINER_GPUS"):
        ContainerExecutor(PlatformSettings(home=tmp_path))


@pytest.mark.parametrize(
    ("instance_type", "gpu"),
    [
        ("ml.g4dn.xlarge", True),
        ("ml.g5.48xlarge", True),
        ("ml.g6e.12xlarge", True),
        ("ml.p3.2xlarge", True),
        ("ml.p4d.24xlarge", True),
        ("ml.p5.48xlarge", True),
        ("local_gpu", True),
        ("ml.m5.large", False),
        ("ml.c5.xlarge", False),
        ("ml.r6g.large", False),
        ("ml.inf2.xlarge", False),
        ("ml.trn1.2xlarge", False),
        ("local", False),
        ("", False),
        (None, False),
    ],
)
def test_gpu_instance_types(instance_type: str | None, gpu: bool) -> None:
    assert training_container.is_gpu_instance_type(instance_type) is gpu


def test_training_command_line_gpu_instance_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training host of a GPU instance type gets the GPUs; the flag is an engine option (before the
    image)."""
    from training.executors.base import HostSpec

    monkeypatch.delenv("SELFMAKER_CONTAINER_GPUS", raising=False)
    monkeypatch.setattr(
        training_container, "detect_engine", lambda override=None: override
    )  # no engine needed
    gpu = HostSpec(
        job_name="j",
        host="algo-1",
        hosts=("algo-1",),
        image="example/train:1",
        ml_root=tmp_path,
        env={"SECRET": "s3cr3t"},
        instance_type="ml.p4d.24xlarge",
    )
    cpu = HostSpec(
        job_name="j",
        host="algo-1",
        hosts=("algo-1",),
        image="example/train:1",
        ml_root=tmp_path,
        instance_type="ml.m5.xlarge",
    )
    podman = training_container.ContainerExecutor(engine="/usr/bin/podman")
    podman.host_has_gpu = True
    cmd = podman.command(gpu, "n", tmp_path / "cid", None)
    at = cmd.index("--device")
    assert cmd[at + 1] == "nvidia.com/gpu=all" and at < cmd.index("example/train:1") and cmd[-1] == "train"
    assert "s3cr3t" not in " ".join(cmd)
    assert "--device" not in podman.command(cpu, "n", tmp_path / "cid", None)
    podman.host_has_gpu = False
    assert "--device" not in podman.command(gpu, "n", tmp_path / "cid", None)
    docker = training_container.ContainerExecutor(engine="/usr/bin/docker", gpus="always")
    docker.host_has_gpu = False
    cmd = docker.command(gpu, "n", tmp_path / "cid", None)
    assert cmd[cmd.index("--gpus") + 1] == "all" and cmd.index("--gpus") < cmd.index("example/train:1")
    assert "--gpus" not in docker.command(cpu, "n", tmp_path / "cid", None)
    with pytest.raises(training_container.ExecutorError, match="SELFMAKER_CONTAINER_GPUS"):
        training_container.ContainerExecutor(gpus="yes")


def test_training_command_line_mounts_a_checkpoint_local_path_outside_opt_ml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CheckpointConfig.LocalPath outside /opt/ml: the host tree's checkpoints/ is mounted there."""
    from training.executors.base import HostSpec

    monkeypatch.setattr(training_container, "detect_engine", lambda override=None: override)
    spec = HostSpec(
        job_name="j",
        host="algo-1",
        hosts=("algo-1",),
        image="example/train:1",
        ml_root=tmp_path,
        mounts=((Path("checkpoints"), "/checkpoints/here"),),
    )
    cmd = training_container.ContainerExecutor(engine="/usr/bin/podman").command(
        spec, "n", tmp_path / "cid", None
    )
    at = cmd.index(f"{(tmp_path / 'checkpoints').resolve()}:/checkpoints/here")
    assert cmd[at - 1] == "-v" and at < cmd.index("example/train:1")
    assert f"{tmp_path.resolve()}:/opt/ml" in cmd


def test_engine_override_must_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFMAKER_CONTAINER_ENGINE", "no-such-engine-binary")
    with pytest.raises(training_container.ContainerEngineError, match="no-such-engine-binary"):
        training_container.detect_engine()


# -- training ------------------------------------------------------------------------------------
def _training_request(name: str, data: Path, out: Path, image: str, epochs: int = 300) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": "train:mse", "Regex": r"train_mse=([0-9.eE+-]+);"}],
        },
        "HyperParameters": {"epochs": str(epochs), "learning_rate": "0.1"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "ContentType": "text/csv",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": data.as_uri(),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": out.as_uri()},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 300},
        "Environment": {"BYOC_TRAIN_FLAG": "on"},
    }


def _linear_csv(path: Path, rows: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        x1, x2 = (i % 7) / 7.0, (i % 5) / 5.0
        lines.append(f"{3.0 * x1 - 2.0 * x2 + 1.0},{x1},{x2}")
    path.write_text("\n".join(lines) + "\n")


def test_training_byoc_container_through_runner(engine: str, byoc_image: str, tmp_path: Path) -> None:
    _linear_csv(tmp_path / "data" / "train.csv")
    lines: list[str] = []
    runner = TrainingJobRunner(
        _training_request("byoc-train-ok", tmp_path / "data", tmp_path / "out", byoc_image, 600),
        tmp_path / "job",
        on_log=lambda host, line: lines.append(line),
    )
    state = runner.run()
    assert state.status == "Completed", (state.failure_reason, lines[-20:])
    assert any("job byoc-train-ok" in line for line in lines), lines[
        :5
    ]  # TRAINING_JOB_NAME reached the container
    assert "train:mse" in state.final_metrics and state.final_metrics["train:mse"]["Value"] < 0.05
    artifact = Path(state.model_artifacts.removeprefix("file://"))
    with tarfile.open(artifact) as tar:
        model = json.load(tar.extractfile("model.json"))  # type: ignore[arg-type]
    assert model["weights"][0] == pytest.approx(3.0, abs=0.4) and model["weights"][1] == pytest.approx(
        -2.0, abs=0.4
    )
    assert containers_with_label(engine, "selfmaker.job=byoc-train-ok") == []


def test_training_failure_file_becomes_failure_reason(engine: str, byoc_image: str, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "empty.csv").write_text("")
    runner = TrainingJobRunner(
        _training_request("byoc-train-bad", tmp_path / "data", tmp_path / "out", byoc_image), tmp_path / "job"
    )
    state = runner.run()
    assert state.status == "Failed"
    assert "no CSV rows in the train channel" in (state.failure_reason or "")


def test_training_stop_stops_the_container(engine: str, byoc_image: str, tmp_path: Path) -> None:
    _linear_csv(tmp_path / "data" / "train.csv", rows=2000)
    seen = threading.Event()

    def on_log(host: str, line: str) -> None:
        if "epoch 0:" in line:
            seen.set()

    runner = TrainingJobRunner(
        _training_request("byoc-train-stop", tmp_path / "data", tmp_path / "out", byoc_image, 10**7),
        tmp_path / "job",
        on_log=on_log,
        stop_grace_seconds=5,
    )
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", runner.run()))
    thread.start()
    try:
        assert seen.wait(120), "training never started"
        runner.stop()
    finally:
        thread.join(120)
    assert not thread.is_alive()
    assert result["state"].status == "Stopped"
    wait_until(
        lambda: containers_with_label(engine, "selfmaker.job=byoc-train-stop") == [], 60, "container removal"
    )


def test_leftover_containers_of_a_killed_platform_are_reaped(
    engine: str, byoc_image: str, tmp_path: Path
) -> None:
    """A platform that died without stopping its containers: the next executor of that home removes them."""
    settings = PlatformSettings(home=tmp_path / "home")
    spec = _spec(tmp_path, byoc_image, {"weights": [1.0], "bias": 0.0}, instance_id="ep-AllTraffic-orphan")

    async def scenario() -> None:
        first = ContainerExecutor(settings)
        handle = await first.start(spec)
        try:
            await _wait_ping(handle)
            # the old platform is gone without stopping anything; a new one starts on the same home
            second = ContainerExecutor(settings)
            await second.engine()
            assert containers_with_label(engine, "selfmaker.instance=ep-AllTraffic-orphan") == []
        finally:
            await handle.stop(1)

    asyncio.run(scenario())


def test_training_command_line_under_network_isolation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EnableNetworkIsolation: one host gets no network (``--network none``); the script inside is told
    the container is its isolation; several hosts share an internal network (reach each other only)."""
    from training.environment import NETWORK_ISOLATION_ENV
    from training.executors.base import HostSpec

    monkeypatch.setattr(training_container, "detect_engine", lambda override=None: override)
    spec = HostSpec(
        job_name="j",
        host="algo-1",
        hosts=("algo-1",),
        image="example/train:1",
        ml_root=tmp_path,
        env={NETWORK_ISOLATION_ENV: "1", "OTHER": "x"},
    )
    executor = training_container.ContainerExecutor(engine="/usr/bin/podman")
    cmd = executor.command(spec, "n", tmp_path / "cid", None)
    assert cmd[cmd.index("--network") + 1] == "none" and cmd.index("--network") < cmd.index("example/train:1")
    assert f"{NETWORK_ISOLATION_ENV}=container" in cmd and NETWORK_ISOLATION_ENV not in cmd
    plain = HostSpec(
        job_name="j", host="algo-1", hosts=("algo-1",), image="example/train:1", ml_root=tmp_path
    )
    assert "--network" not in executor.command(plain, "n", tmp_path / "cid", None)
    calls: list[list[str]] = []

    def record(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(args))
        return subprocess.CompletedProcess(args, 0, b"", b"")

    monkeypatch.setattr(training_container.subprocess, "run", record)
    two = HostSpec(
        job_name="j",
        host="algo-1",
        hosts=("algo-1", "algo-2"),
        image="example/train:1",
        ml_root=tmp_path,
        env={NETWORK_ISOLATION_ENV: "1"},
    )
    network = executor._network_for(two)
    assert network is not None and ["/usr/bin/podman", "network", "create", "--internal", network] in calls


def test_serving_container_and_its_engine_client_get_an_explicit_environment(
    engine: str, byoc_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("H26_UNRELATED_SECRET", "hunter2-container")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-secret-container")
    settings = PlatformSettings(home=tmp_path / "home")
    spec = _spec(
        tmp_path,
        byoc_image,
        {"weights": [1.0, 1.0], "bias": 0.0},
        environment={"BYOC_GREETING": "explicit"},
        instance_id="ep-AllTraffic-envtest",
    )

    async def scenario() -> tuple[str, str]:
        executor = ContainerExecutor(settings)
        handle = await executor.start(spec)
        try:
            await _wait_ping(handle)
            assert handle.pid is not None
            client = Path(f"/proc/{handle.pid}/environ").read_bytes().decode(errors="replace")
            inside = await asyncio.to_thread(
                subprocess.run,
                [engine, "exec", handle.describe()["container"], "env"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            return client, inside.stdout
        finally:
            await handle.stop(5)

    client, inside = asyncio.run(scenario())
    assert "hunter2-container" not in client and "platform-secret-container" not in client
    assert "BYOC_GREETING=explicit" in client  # passed to the container by name
    assert "BYOC_GREETING=explicit" in inside
    assert "hunter2-container" not in inside and "platform-secret-container" not in inside
