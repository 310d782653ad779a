"""Run the real SageMaker Python SDK (``sagemaker<3``) against a running ``selfmaker up``.

The SDK cannot share the project's venv (it pins ``packaging<25``; pulumi needs ``>=26``), so it lives in
its own test venv, ``.venv-sdk`` (``make sdk-env``; ``SELFMAKER_SDK_PYTHON`` names another interpreter).
A test writes its SDK code as a script; :func:`run_sdk` runs it there as a subprocess with:

* ``AWS_ENDPOINT_URL_SAGEMAKER``, ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``,
  ``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`` (botocore's name for the logs client's: ``_LOGS`` is not read) and
  ``AWS_ENDPOINT_URL_CLOUDWATCH`` (metrics: ``TrainingJobAnalytics``) at
  the platform, every other AWS service (S3, STS, ...) at moto's server — the SDK's own clients, no code
  change, exactly as a user would point it;
* the SDK's telemetry off (its user config file) and a ``sitecustomize`` that refuses every connection
  and name lookup that is not loopback, so nothing the SDK does can leave the machine;
* dummy credentials and ``us-east-1``;
* the SDK's polling sleeps (5 s between job polls, 10 s between log polls, 30 s between endpoint polls)
  capped at 0.5 s: the platform is local, and a test waits for it, not for the SDK's clock. Nothing else of
  the SDK is touched.

Asserts live in the script (a failed assert exits non-zero, with its traceback in ``stderr``); a script
hands results back with ``result(value)`` (defined by :data:`PRELUDE`): one JSON line prefixed with
``RESULT ``.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SDK_PYTHON = Path(os.environ.get("SELFMAKER_SDK_PYTHON") or ROOT / ".venv-sdk" / "bin" / "python")
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"

# Loaded by every interpreter the script starts (sitecustomize), before the SDK is imported.
_GUARD = '''
"""Tests only talk to 127.0.0.1: refuse any other connection or name lookup, loudly."""
import ipaddress
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _loopback(host):
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).strip("[]")
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(address):
    if isinstance(address, tuple) and address and not _loopback(address[0]):
        raise ConnectionRefusedError(f"sdkkit: connection to {address[0]!r} refused (tests stay on loopback)")


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo


def connect(self, address):
    _check(address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, f"sdkkit: lookup of {host!r} refused (loopback only)")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.getaddrinfo = getaddrinfo
'''

_SDK_CONFIG = """SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""

# The script's preamble: a Session on the environment above (region, bucket in moto).
PRELUDE = f"""
import json, os, sys
import boto3
import sagemaker
import sagemaker.session
import time as _time


class _QuickPolls:
    # ``time`` for sagemaker.session: its waiters' sleeps capped at 0.5 s (the module docstring)

    def __getattr__(self, name):
        return getattr(_time, name)

    @staticmethod
    def sleep(seconds):
        _time.sleep(min(seconds, 0.5))


sagemaker.session.time = _QuickPolls()

ROLE = {ROLE!r}
BUCKET = os.environ["SDK_BUCKET"]
boto_session = boto3.Session(region_name="us-east-1")
session = sagemaker.Session(boto_session=boto_session, default_bucket=BUCKET)


def result(value):
    # a new line first: the SDK's progress dots ("----!") end without one
    print("\\nRESULT " + json.dumps(value, default=str), flush=True)
"""


@dataclass
class SdkRun:
    """What one SDK script did."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> Any:
        """The value the script passed to ``result(...)`` (the last one), or None."""
        found = None
        for line in self.stdout.splitlines():
            if line.startswith("RESULT "):
                found = json.loads(line.removeprefix("RESULT "))
        return found

    def check(self) -> SdkRun:
        """Fail with the script's output unless it exited 0."""
        if self.returncode != 0:
            raise AssertionError(
                f"SDK script exited {self.returncode}\n--- stdout ---\n{self.stdout[-6000:]}"
                f"\n--- stderr ---\n{self.stderr[-8000:]}"
            )
        return self


def sdk_environment(platform_url: str, moto_url: str, workdir: Path, bucket: str) -> dict[str, str]:
    """The environment an SDK script runs in (see the module docstring)."""
    guard_dir = workdir / "sdkkit-site"
    guard_dir.mkdir(parents=True, exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(_GUARD)
    config = workdir / "sdkkit-config.yaml"
    config.write_text(_SDK_CONFIG)
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update(
        HOME=str(workdir),
        PYTHONPATH=str(guard_dir),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto_url,
        AWS_ENDPOINT_URL_SAGEMAKER=platform_url,
        AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=platform_url,
        AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=platform_url,
        AWS_ENDPOINT_URL_CLOUDWATCH=platform_url,
        AWS_EC2_METADATA_DISABLED="true",
        SAGEMAKER_USER_CONFIG_OVERRIDE=str(config),
        SAGEMAKER_ADMIN_CONFIG_OVERRIDE=str(config),
        SAGEMAKER_SUPPRESS_V2_WARNING="1",
        SDK_BUCKET=bucket,
        PYTHONUNBUFFERED="1",
    )
    return env


def run_sdk(
    script: str,
    *,
    platform_url: str,
    moto_url: str,
    workdir: Path,
    bucket: str = "sdk-tests",
    timeout: float = 600.0,
    env: dict[str, str] | None = None,
) -> SdkRun:
    """Run ``script`` (after :data:`PRELUDE`) with the SDK's interpreter; ``workdir`` is its cwd and home.

    The bucket is created in moto first. Fails the test if the SDK venv is missing (``make sdk-env``):
    SDK tests are part of the suite, never skipped.
    """
    if not SDK_PYTHON.exists():
        raise AssertionError(f"{SDK_PYTHON} is missing: run `make sdk-env` (the SageMaker SDK's test venv)")
    workdir.mkdir(parents=True, exist_ok=True)
    import boto3  # here, not at the top: only the test process needs it, not the script's environment

    boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    ).create_bucket(Bucket=bucket)
    path = workdir / "sdk_script.py"
    path.write_text(PRELUDE + "\n" + textwrap.dedent(script))
    full_env = {**sdk_environment(platform_url, moto_url, workdir, bucket), **(env or {})}
    proc = subprocess.run(
        [str(SDK_PYTHON), str(path)],
        cwd=str(workdir),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return SdkRun(proc.returncode, proc.stdout, proc.stderr)
