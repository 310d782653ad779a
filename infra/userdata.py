"""User data for instance-group instances: start the container runtime, log in to ECR, pull the image
and run it with ``serve`` or ``async`` (pure rendering; every value is shell-quoted).

``serve`` downloads ``model.tar.gz`` from S3, unpacks it on the host and runs the image's SageMaker
model server on port 8080 with it mounted read-only at ``/opt/ml/model`` (what SageMaker does before
``serve``; it works whatever extra arguments the image's entrypoint adds). Training and transform jobs run on
AWS Batch (:mod:`infra.components.jobs`), not from user data. ``async`` serves like ``serve`` (the model
server listening on 127.0.0.1 only) and runs the image's async worker next to it
(``python -m serving.asyncq`` with the SQS backend), which drains the endpoint's queue into that server.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

MODES = ("serve", "async")
CONTAINER_PORT = 8080
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQS_URL_RE = re.compile(
    r"^https://sqs\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[0-9]{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?$"
)
_S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$")
#: Variables the renderer sets itself; user environment may not override them.
RESERVED_ENV = frozenset(
    {
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "SAGEMAKER_REGION",
        "TRAINING_JOB_NAME",
        "SELFMAKER_ENDPOINT_NAME",
        "SELFMAKER_VARIANT_NAME",
    }
)
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
    #: serve mode behind the gateway: the endpoint and production variant this instance answers for
    endpoint: str | None = None
    variant: str | None = None
    ml_root: str = "/opt/ml"
    #: async mode: the endpoint's queue, the worker's state prefix, invocations per instance
    #: (MaxConcurrentInvocationsPerInstance) and the lease length (the endpoint's name is ``endpoint``)
    queue_url: str | None = None
    state_uri: str | None = None
    concurrency: int = 1
    visibility_timeout: int = 300
    #: seconds docker gives the worker to stop gracefully (instance scale-in): it hands unfinished
    #: requests back at once and lets results being stored finish
    stop_timeout: int = 90


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
    if spec.mode == "async":
        if not spec.queue_url or not _SQS_URL_RE.match(spec.queue_url):
            raise ValueError(f"queue_url: {spec.queue_url!r} is not an SQS queue URL")
        _check_s3("state_uri", spec.state_uri)
        if not spec.endpoint:
            raise ValueError(
                "endpoint: an async worker needs its endpoint's name (the queue name it reports)"
            )
        if not 1 <= spec.concurrency <= 1000:
            raise ValueError("concurrency: must be 1-1000")
        if not 1 <= spec.visibility_timeout <= 43200:
            raise ValueError("visibility_timeout: must be 1-43200")
        if not 1 <= spec.stop_timeout <= 3600:
            raise ValueError("stop_timeout: must be 1-3600")
    uri = _check_s3("model_data", spec.model_data)
    if not uri.endswith(".tar.gz"):
        raise ValueError(f"model_data: {uri!r} must point at a model.tar.gz")


def _q(value: str) -> str:
    return shlex.quote(value)


def _docker_run_args(spec: UserDataSpec) -> list[str]:
    """Options shared by both modes, one per line of the rendered ``docker run``."""
    args = [
        "--log-driver awslogs",
        '--log-opt awslogs-region="$REGION"',
        '--log-opt awslogs-group="$LOG_GROUP"',
        '--log-opt awslogs-stream="$INSTANCE_ID"',
    ]
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
    # An async instance takes no traffic from the network: only its own worker calls the model server.
    publish = (
        f"127.0.0.1:{spec.host_port}:{CONTAINER_PORT}"
        if spec.mode == "async"
        else f"{spec.host_port}:{CONTAINER_PORT}"
    )
    return f"""
ML_ROOT={_q(spec.ml_root)}
MODEL_DATA={_q(spec.model_data or "")}
rm -rf "$ML_ROOT/model"
mkdir -p "$ML_ROOT/model"
retry aws s3 cp "$MODEL_DATA" "$ML_ROOT/model.tar.gz" --only-show-errors
tar -xzf "$ML_ROOT/model.tar.gz" -C "$ML_ROOT/model"
rm -f "$ML_ROOT/model.tar.gz"
docker rm -f selfmaker-serve >/dev/null 2>&1 || true
docker run -d --name selfmaker-serve --restart unless-stopped -p {publish} \\
  -v "$ML_ROOT/model:/opt/ml/model:ro" \\
  {args} \\
  "$IMAGE" serve
echo "selfmaker: serving {spec.group} ($MODEL_DATA) on port {spec.host_port}"
"""


def _async_body(spec: UserDataSpec) -> str:
    # The worker waits for the model server's /ping itself (unreachable = retried, never a failure).
    args = " \\\n  ".join(_docker_run_args(spec))
    worker = " ".join(
        _q(a)
        for a in (
            "python",
            "-m",
            "serving.asyncq",
            "--queue",
            f"sqs:{spec.queue_url}",
            "--state",
            spec.state_uri or "",
            "--name",
            spec.endpoint or "",
            "--model-url",
            f"http://127.0.0.1:{spec.host_port}",
            "--concurrency",
            str(spec.concurrency),
            "--visibility-timeout",
            str(spec.visibility_timeout),
        )
    )
    args = args.replace('awslogs-stream="$INSTANCE_ID"', 'awslogs-stream="$INSTANCE_ID-async-worker"')
    return (
        _serve_body(spec)
        + f"""
# Start taking requests once the model answers /ping (bounded: ~10 minutes).
for _ in $(seq 1 300); do
  curl -sf -o /dev/null http://127.0.0.1:{spec.host_port}/ping && break
  sleep 2
done
docker rm -f selfmaker-async-worker >/dev/null 2>&1 || true
docker run -d --name selfmaker-async-worker --restart unless-stopped --network host \\
  --stop-timeout {int(spec.stop_timeout)} \\
  {args} \\
  "$IMAGE" {worker}
echo "selfmaker: async worker for {spec.endpoint} started"
"""
    )


def render_user_data(spec: UserDataSpec) -> str:
    """The bash bootstrap script for ``spec`` (raises ``ValueError`` naming a bad field)."""
    validate(spec)
    install = (
        "dnf install -y docker"
        if spec.install_docker
        else 'echo "selfmaker: docker missing from the AMI" >&2; exit 1'
    )
    header = _HEADER.format(
        mode=spec.mode,
        region=_q(spec.region),
        registry=_q(spec.registry),
        image=_q(spec.image),
        log_group=_q(spec.log_group),
        install=install,
    )
    bodies = {"serve": _serve_body, "async": _async_body}
    body = bodies[spec.mode](spec)
    return header + body
