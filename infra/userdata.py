"""User data for instance-group instances: start the container runtime, log in to ECR, pull the image
and run it with ``serve`` or ``train`` (pure rendering; every value is shell-quoted).

``serve`` downloads ``model.tar.gz`` from S3, unpacks it on the host and runs the image's SageMaker
model server on port 8080 with it mounted read-only at ``/opt/ml/model`` (what SageMaker does before
``serve``; it works whatever extra arguments the image's entrypoint adds). ``train`` prepares the
``/opt/ml`` tree (channels synced from S3, config JSONs), restores and periodically saves checkpoints,
runs the image with ``train`` and uploads ``model.tar.gz``, ``output.tar.gz`` and the failure file to
``<output>/<job>/output/`` — the same layout SageMaker uses.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

MODES = ("serve", "train")
CONTAINER_PORT = 8080
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$")
#: Variables the renderer sets itself; user environment may not override them.
RESERVED_ENV = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION", "SAGEMAKER_REGION", "TRAINING_JOB_NAME",
                          "SELFMAKER_ENDPOINT_NAME", "SELFMAKER_VARIANT_NAME"})
#: The model server's settings (serving/settings.py) naming the endpoint and variant an instance serves.
ENDPOINT_ENV, VARIANT_ENV = "SELFMAKER_ENDPOINT_NAME", "SELFMAKER_VARIANT_NAME"


@dataclass(frozen=True)
class UserDataSpec:
    """Everything the bootstrap script needs; validated by :func:`render_user_data`."""

    mode: str
    group: str
    region: str
    registry: str
    image: str
    log_group: str
    gpu: bool = False
    install_docker: bool = True
    environment: Mapping[str, str] = field(default_factory=dict)
    host_port: int = CONTAINER_PORT
    model_data: str | None = None
    channels: Mapping[str, str] = field(default_factory=dict)
    output_uri: str | None = None
    checkpoint_uri: str | None = None
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    #: serve mode behind the gateway: the endpoint and production variant this instance answers for
    endpoint: str | None = None
    variant: str | None = None
    checkpoint_sync_seconds: int = 300
    terminate_when_done: bool = True
    ml_root: str = "/opt/ml"


def _check_s3(name: str, uri: str | None) -> str:
    if not uri or not _S3_URI_RE.match(uri):
        raise ValueError(f"{name}: {uri!r} is not an s3:// URI")
    return uri


def validate(spec: UserDataSpec) -> None:
    """Raise ``ValueError`` naming the first bad field of ``spec``."""
    if spec.mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, not {spec.mode!r}")
    for name in ("group", "region", "registry", "image", "log_group", "ml_root"):
        value = getattr(spec, name)
        if not value or any(c in value for c in "\n\r\0"):
            raise ValueError(f"{name}: must be a non-empty single-line string")
    if not spec.image.startswith(spec.registry + "/"):
        raise ValueError(f"image: {spec.image!r} is not in registry {spec.registry!r}")
    for key in spec.environment:
        if not _ENV_KEY_RE.match(key):
            raise ValueError(f"environment: {key!r} is not a valid variable name")
        if key in RESERVED_ENV:
            raise ValueError(f"environment: {key} is set by selfmaker")
    if not 1 <= spec.host_port <= 65535:
        raise ValueError("host_port: must be 1-65535")
    for name in ("endpoint", "variant"):
        value = getattr(spec, name)
        if value is not None and not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", value):
            raise ValueError(f"{name}: {value!r} is not a SageMaker endpoint/variant name")
    if (spec.endpoint is None) != (spec.variant is None):
        raise ValueError("endpoint: endpoint and variant are set together")
    if spec.mode == "serve":
        uri = _check_s3("model_data", spec.model_data)
        if not uri.endswith(".tar.gz"):
            raise ValueError(f"model_data: {uri!r} must point at a model.tar.gz")
    else:
        if not spec.channels:
            raise ValueError("channels: a training group needs at least one input channel")
        for channel, uri in spec.channels.items():
            if not _CHANNEL_RE.match(channel):
                raise ValueError(f"channels: {channel!r} is not a valid channel name")
            _check_s3(f"channels.{channel}", uri)
        _check_s3("output_uri", spec.output_uri)
        _check_s3("checkpoint_uri", spec.checkpoint_uri)
        if spec.checkpoint_sync_seconds < 1:
            raise ValueError("checkpoint_sync_seconds: must be >= 1")
        for key, value in spec.hyperparameters.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"hyperparameters: {key!r} - keys and values must be strings (SageMaker passes strings)")


def _q(value: str) -> str:
    return shlex.quote(value)


def _docker_run_args(spec: UserDataSpec) -> list[str]:
    """Options shared by both modes, one per line of the rendered ``docker run``."""
    args = ["--log-driver awslogs", '--log-opt awslogs-region="$REGION"', '--log-opt awslogs-group="$LOG_GROUP"',
            '--log-opt awslogs-stream="$INSTANCE_ID"']
    if spec.gpu:
        args.append("--gpus all")
    args += [f'-e {key}="$REGION"' for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "SAGEMAKER_REGION")]
    args += [f"-e {_q(f'{key}={value}')}" for key, value in sorted(spec.environment.items())]
    if spec.endpoint is not None and spec.variant is not None:
        args += [f"-e {_q(f'{ENDPOINT_ENV}={spec.endpoint}')}", f"-e {_q(f'{VARIANT_ENV}={spec.variant}')}"]
    return args


_HEADER = """#!/bin/bash
# selfmaker {mode} instance bootstrap - rendered by infra/userdata.py; output lands in cloud-init's log.
set -euo pipefail
REGION={region}
REGISTRY={registry}
IMAGE={image}
LOG_GROUP={log_group}

retry() {{
  local attempt=1
  until "$@"; do
    if [ "$attempt" -ge 5 ]; then echo "selfmaker: giving up on: $*" >&2; return 1; fi
    sleep $((attempt * 5))
    attempt=$((attempt + 1))
  done
}}
imds() {{
  local token
  token=$(curl -sfS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)
  curl -sfS -H "X-aws-ec2-metadata-token: ${{token}}" "http://169.254.169.254/latest/meta-data/$1"
}}
ecr_login() {{
  aws ecr get-login-password --region "$REGION" | docker login --username AWS --password-stdin "$REGISTRY"
}}

INSTANCE_ID=$(retry imds instance-id)
INSTANCE_TYPE=$(retry imds instance-type)

# Container runtime: Amazon Linux 2023 needs docker installed; the GPU deep-learning AMI ships it with
# the NVIDIA container toolkit.
if ! command -v docker >/dev/null 2>&1; then
  {install}
fi
systemctl enable --now docker
retry ecr_login
retry docker pull "$IMAGE"
"""


def _serve_body(spec: UserDataSpec) -> str:
    # The host unpacks model.tar.gz into <ml_root>/model and mounts it at /opt/ml/model, as SageMaker
    # does before `serve`; the image's entrypoint then serves /opt/ml/model.
    args = " \\\n  ".join(_docker_run_args(spec))
    return f"""
ML_ROOT={_q(spec.ml_root)}
MODEL_DATA={_q(spec.model_data or "")}
rm -rf "$ML_ROOT/model"
mkdir -p "$ML_ROOT/model"
retry aws s3 cp "$MODEL_DATA" "$ML_ROOT/model.tar.gz" --only-show-errors
tar -xzf "$ML_ROOT/model.tar.gz" -C "$ML_ROOT/model"
rm -f "$ML_ROOT/model.tar.gz"
docker rm -f selfmaker-serve >/dev/null 2>&1 || true
docker run -d --name selfmaker-serve --restart unless-stopped -p {spec.host_port}:{CONTAINER_PORT} \\
  -v "$ML_ROOT/model:/opt/ml/model:ro" \\
  {args} \\
  "$IMAGE" serve
echo "selfmaker: serving {spec.group} ($MODEL_DATA) on port {spec.host_port}"
"""


def _train_body(spec: UserDataSpec) -> str:
    input_config = {
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        for name in sorted(spec.channels)
    }
    syncs = "\n".join(
        f'aws s3 sync {_q(uri)} "$ML_ROOT/input/data/"{_q(name)} --only-show-errors'
        for name, uri in sorted(spec.channels.items())
    )
    args = " \\\n  ".join(_docker_run_args(spec))
    output_uri = (spec.output_uri or "").rstrip("/")
    return f"""
ML_ROOT={_q(spec.ml_root)}
JOB_NAME={_q(spec.group)}-"$INSTANCE_ID"
OUTPUT={_q(output_uri)}/"$JOB_NAME"/output
CHECKPOINTS={_q((spec.checkpoint_uri or "").rstrip("/") + "/")}
mkdir -p "$ML_ROOT/input/config" "$ML_ROOT/input/data" "$ML_ROOT/model" "$ML_ROOT/output/data" \\
  "$ML_ROOT/checkpoints"
{syncs}
printf '%s\\n' {_q(json.dumps(dict(spec.hyperparameters), sort_keys=True))} \\
  > "$ML_ROOT/input/config/hyperparameters.json"
printf '%s\\n' {_q(json.dumps(input_config, sort_keys=True))} > "$ML_ROOT/input/config/inputdataconfig.json"
printf '{{"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0", '\\
'"current_instance_type": "%s"}}\\n' "$INSTANCE_TYPE" > "$ML_ROOT/input/config/resourceconfig.json"

# Resume from the group's checkpoints (spot replacements pick up where the last instance stopped)
# and save them while the job runs.
aws s3 sync "$CHECKPOINTS" "$ML_ROOT/checkpoints" --only-show-errors
(
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  while true; do
    sleep {int(spec.checkpoint_sync_seconds)} & sleeper=$!
    wait "$sleeper"
    aws s3 sync "$ML_ROOT/checkpoints" "$CHECKPOINTS" --only-show-errors || true
  done
) &
SYNC_PID=$!

set +e
docker run --rm --name selfmaker-train --network host -v "$ML_ROOT:/opt/ml" \\
  -e TRAINING_JOB_NAME="$JOB_NAME" \\
  {args} \\
  "$IMAGE" train
RC=$?
set -e
kill "$SYNC_PID" 2>/dev/null || true
wait "$SYNC_PID" 2>/dev/null || true
aws s3 sync "$ML_ROOT/checkpoints" "$CHECKPOINTS" --only-show-errors

if [ "$RC" -eq 0 ]; then
  tar -czf "$ML_ROOT/output/model.tar.gz" -C "$ML_ROOT/model" .
  aws s3 cp "$ML_ROOT/output/model.tar.gz" "$OUTPUT/model.tar.gz" --only-show-errors
fi
if [ -n "$(ls -A "$ML_ROOT/output/data")" ]; then
  tar -czf "$ML_ROOT/output/output.tar.gz" -C "$ML_ROOT/output/data" .
  aws s3 cp "$ML_ROOT/output/output.tar.gz" "$OUTPUT/output.tar.gz" --only-show-errors
fi
if [ -f "$ML_ROOT/output/failure" ]; then
  aws s3 cp "$ML_ROOT/output/failure" "$OUTPUT/failure" --only-show-errors
fi
echo "selfmaker: training job $JOB_NAME finished with exit code $RC"
{_finish(spec)}exit "$RC"
"""


def _finish(spec: UserDataSpec) -> str:
    if not spec.terminate_when_done:
        return ""
    # One job per instance: leave the group (and lower its desired capacity) so nothing idles on a
    # GPU; a spot interruption instead keeps desired capacity and the replacement resumes.
    return (
        'aws autoscaling terminate-instance-in-auto-scaling-group --region "$REGION" '
        '--instance-id "$INSTANCE_ID" --should-decrement-desired-capacity || true\n'
    )


def render_user_data(spec: UserDataSpec) -> str:
    """The bash bootstrap script for ``spec`` (raises ``ValueError`` naming a bad field)."""
    validate(spec)
    install = "dnf install -y docker" if spec.install_docker else 'echo "selfmaker: docker missing from the AMI" >&2; exit 1'
    header = _HEADER.format(
        mode=spec.mode, region=_q(spec.region), registry=_q(spec.registry), image=_q(spec.image),
        log_group=_q(spec.log_group), install=install,
    )
    body = _serve_body(spec) if spec.mode == "serve" else _train_body(spec)
    return header + body
