"""The bootstrap script: syntax-checked by bash and executed against recording fake binaries.

The fakes (docker, aws, curl, systemctl, dnf) stand in for the AWS host only; the script under test
is the real rendered output, run by the real bash, with real tar and real files under tmp_path.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra import userdata

REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
SERVE = userdata.UserDataSpec(
    mode="serve",
    group="serve-cpu",
    region="us-east-1",
    registry=REGISTRY,
    image=f"{REGISTRY}/selfmaker-dev/serving:0.1.0",
    log_group="/selfmaker-dev/serve-cpu",
    environment={"SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
    model_data="s3://models-b/models/demo/model.tar.gz",
)

FAKE = r"""#!/bin/bash
name=$(basename "$0")
# one record at a time: the fakes of a pipeline (aws ... | docker login ...) run concurrently
{ flock 9
  { printf '%s' "$name"; for a in "$@"; do printf '\0%s' "$a"; done; printf '\1'; } >> "$FAKE_LOG"
} 9>>"$FAKE_LOG.lock"
case "$name $1" in
  "curl "*) case "$*" in
      *api/token*) echo TOKEN ;;
      *instance-id*) echo i-0123456789abcdef0 ;;
      *instance-type*) echo g5.2xlarge ;;
    esac ;;
  "aws ecr") echo ecr-password ;;
  "aws s3")
    if [ "$2" = sync ] && [[ "$3" == s3://* ]]; then mkdir -p "$4"; fi
    if [ "$2" = cp ] && [[ "$3" == s3://*.tar.gz ]]; then
      src=$(mktemp -d); echo onnx > "$src/model.onnx"; tar -czf "$4" -C "$src" .; rm -rf "$src"
    fi ;;
  "docker login") cat > /dev/null ;;
  "docker run")
    for a in "$@"; do
      if [[ "$a" == *:/opt/ml ]]; then
        root=${a%:/opt/ml}
        echo onnx > "$root/model/model.onnx"
        echo 1,2 > "$root/output/data/predictions.csv"
        if [ "${FAKE_TRAIN_RC:-0}" != 0 ]; then echo "AlgorithmError: boom" > "$root/output/failure"; fi
        exit "${FAKE_TRAIN_RC:-0}"
      fi
    done ;;
esac
exit 0
"""


def run_script(
    script: str, tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run ``script`` with the fakes first on PATH; return the result and the recorded calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("docker", "aws", "curl", "systemctl", "dnf"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_bytes(b"")
    path = tmp_path / "user-data.sh"
    path.write_text(script)
    result = subprocess.run(
        ["bash", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(log), "HOME": str(tmp_path), **env},
    )
    calls = [record.split("\0") for record in log.read_bytes().decode().split("\1") if record]
    return result, calls


def test_rendered_script_is_valid_bash() -> None:
    script = userdata.render_user_data(SERVE)
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def _serve_spec(tmp_path: Path, **changes: object) -> userdata.UserDataSpec:
    return replace(SERVE, ml_root=str(tmp_path / "opt-ml"), **changes)  # type: ignore[arg-type]


def test_serve_script_logs_in_pulls_and_runs_the_model_server(tmp_path: Path) -> None:
    spec = _serve_spec(tmp_path)
    result, calls = run_script(userdata.render_user_data(spec), tmp_path)
    assert result.returncode == 0, result.stderr
    root = Path(spec.ml_root)
    assert [
        "aws",
        "s3",
        "cp",
        "s3://models-b/models/demo/model.tar.gz",
        f"{root}/model.tar.gz",
        "--only-show-errors",
    ] in calls
    assert (root / "model/model.onnx").read_text() == "onnx\n"  # unpacked on the host
    assert not (root / "model.tar.gz").exists()
    assert ["systemctl", "enable", "--now", "docker"] in calls
    assert ["aws", "ecr", "get-login-password", "--region", "us-east-1"] in calls
    assert ["docker", "login", "--username", "AWS", "--password-stdin", REGISTRY] in calls
    assert ["docker", "pull", SERVE.image] in calls
    run = next(c for c in calls if c[:2] == ["docker", "run"])
    assert run[-2:] == [SERVE.image, "serve"]
    assert run[run.index("-v") + 1] == f"{root}/model:/opt/ml/model:ro"
    assert "-p" in run and run[run.index("-p") + 1] == "8080:8080"
    assert "--restart" in run and "--gpus" not in run
    env = {run[i + 1] for i, a in enumerate(run) if a == "-e"}
    assert {"AWS_REGION=us-east-1", "SAGEMAKER_REGION=us-east-1", "SAGEMAKER_MODEL_SERVER_WORKERS=2"} <= env
    opts = {run[i + 1] for i, a in enumerate(run) if a == "--log-opt"}
    assert {"awslogs-group=/selfmaker-dev/serve-cpu", "awslogs-stream=i-0123456789abcdef0"} <= opts
    # docker is already on the (fake) host, so nothing is installed
    assert not [c for c in calls if c[0] == "dnf"]


def test_a_variant_instance_tells_the_model_server_its_endpoint_and_variant(tmp_path: Path) -> None:
    spec = replace(_serve_spec(tmp_path), endpoint="churn", variant="challenger")
    result, calls = run_script(userdata.render_user_data(spec), tmp_path)
    assert result.returncode == 0, result.stderr
    run = next(c for c in calls if c[:2] == ["docker", "run"])
    env = {run[i + 1] for i, a in enumerate(run) if a == "-e"}
    # what serving.settings reads as endpoint_name / variant_name
    assert {"SELFMAKER_ENDPOINT_NAME=churn", "SELFMAKER_VARIANT_NAME=challenger"} <= env


@given(
    st.dictionaries(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,12}", fullmatch=True).filter(
            lambda k: k not in userdata.RESERVED_ENV
        ),
        st.text(
            alphabet=st.characters(blacklist_characters="\0\1", blacklist_categories=("Cs",)), max_size=30
        ),
        max_size=4,
    )
)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_environment_values_reach_docker_exactly(tmp_path: Path, environment: dict[str, str]) -> None:
    result, calls = run_script(
        userdata.render_user_data(_serve_spec(tmp_path, environment=environment)), tmp_path
    )
    assert result.returncode == 0, result.stderr
    run = next(c for c in calls if c[:2] == ["docker", "run"])
    passed = [run[i + 1] for i, a in enumerate(run) if a == "-e"]
    for key, value in environment.items():
        assert f"{key}={value}" in passed


def test_cpu_hosts_install_docker_when_missing(tmp_path: Path) -> None:
    script = userdata.render_user_data(SERVE)
    assert "dnf install -y docker" in script
    gpu = userdata.render_user_data(replace(SERVE, gpu=True, install_docker=False))
    assert "dnf install" not in gpu and "--gpus all" in gpu


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mode": "predict"}, "mode"),
        ({"model_data": "s3://models-b/models/model.onnx"}, "model_data"),
        ({"model_data": "https://example.com/model.tar.gz"}, "model_data"),
        ({"model_data": None}, "model_data"),
        ({"image": "docker.io/library/python:3"}, "image"),
        ({"environment": {"1BAD": "x"}}, "environment"),
        ({"environment": {"AWS_REGION": "x"}}, "environment"),
        ({"region": "us-east-1\nrm -rf /"}, "region"),
        ({"host_port": 0}, "host_port"),
        ({"mode": "train"}, "mode"),  # training runs on AWS Batch (infra/components/jobs.py)
        ({"endpoint": "churn"}, "endpoint"),
        ({"endpoint": "churn", "variant": "a b"}, "variant"),
        ({"endpoint": "churn;reboot", "variant": "v1"}, "endpoint"),
    ],
)
def test_bad_specs_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        userdata.render_user_data(replace(SERVE, **change))  # type: ignore[arg-type]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _env_has(proc: Path, needle: str) -> bool:
    try:
        return needle.encode() in (proc / "environ").read_bytes()
    except OSError:
        return False


QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/churn-batch-queue-1a2b3c"


def _async_spec(tmp_path: Path, **changes: object) -> userdata.UserDataSpec:
    values: dict[str, object] = {
        "mode": "async",
        "group": "churn-batch-workers",
        "ml_root": str(tmp_path / "opt-ml"),
        "queue_url": QUEUE_URL,
        "state_uri": "s3://outputs-b/async/churn-batch/state/",
        "endpoint": "churn-batch",
        "variant": "AllTraffic",
        "concurrency": 4,
        "visibility_timeout": 3720,
        **changes,
    }
    return replace(SERVE, **values)  # type: ignore[arg-type]


def test_async_script_runs_a_private_model_server_and_the_worker_beside_it(tmp_path: Path) -> None:
    spec = _async_spec(tmp_path)
    script = userdata.render_user_data(spec)
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    result, calls = run_script(script, tmp_path)
    assert result.returncode == 0, result.stderr
    runs = [c for c in calls if c[:2] == ["docker", "run"]]
    assert len(runs) == 2
    server, worker = runs
    assert server[-2:] == [SERVE.image, "serve"]
    assert server[server.index("-p") + 1] == "127.0.0.1:8080:8080"  # not reachable from the network
    # the worker starts after the model answers /ping, with the SQS backend and an S3 state prefix
    ping = [i for i, c in enumerate(calls) if c[0] == "curl" and "http://127.0.0.1:8080/ping" in c]
    assert ping and ping[0] < calls.index(worker)
    image_at = worker.index(SERVE.image)
    assert worker[image_at + 1 :] == [
        "python",
        "-m",
        "serving.asyncq",
        "--queue",
        f"sqs:{QUEUE_URL}",
        "--state",
        "s3://outputs-b/async/churn-batch/state/",
        "--name",
        "churn-batch",
        "--model-url",
        "http://127.0.0.1:8080",
        "--concurrency",
        "4",
        "--visibility-timeout",
        "3720",
    ]
    assert worker[worker.index("--network") + 1] == "host"
    assert worker[worker.index("--stop-timeout") + 1] == "90"  # scale-in: time to hand work back and finish
    opts = {worker[i + 1] for i, a in enumerate(worker) if a == "--log-opt"}
    assert "awslogs-stream=i-0123456789abcdef0-async-worker" in opts
    env = {worker[i + 1] for i, a in enumerate(worker) if a == "-e"}
    assert {"AWS_REGION=us-east-1", "SAGEMAKER_MODEL_SERVER_WORKERS=2"} <= env


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"queue_url": "https://example.com/q"}, "queue_url"),
        ({"queue_url": None}, "queue_url"),
        ({"state_uri": "/tmp/state"}, "state_uri"),
        ({"endpoint": None, "variant": None}, "endpoint"),
        ({"concurrency": 0}, "concurrency"),
        ({"visibility_timeout": 43201}, "visibility_timeout"),
    ],
)
def test_bad_async_specs_name_the_field(change: dict[str, object], field: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        userdata.render_user_data(_async_spec(tmp_path, **change))
