"""Fixtures shared by every test package.

Package-specific fixtures live in ``tests/<package>/conftest.py``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from testkit import find_free_port

# Timing is not what property tests check: on a loaded 2-core CI machine a fixed per-example deadline
# only makes them flaky.
settings.register_profile("selfmaker", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("selfmaker")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def free_port() -> int:
    return find_free_port()


def build_wheel(dest: Path, name: str, source: str, version: str = "0.1") -> Path:
    """A pure-Python wheel of one module ``name`` (``name/__init__.py`` = ``source``) in ``dest``, made by
    hand (METADATA, WHEEL, RECORD with hashes): pip installs it offline, no build backend needed."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: selfmaker-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture
def make_wheel() -> Callable[..., Path]:
    """:func:`build_wheel`: ``make_wheel(dest_dir, module_name, module_source)`` -> the wheel's path."""
    return build_wheel


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real moto server on 127.0.0.1 (S3, SNS, SQS, ...); yields its endpoint URL.

    Tests pass the URL to the code under test (``AWS_ENDPOINT_URL`` or an explicit client);
    credentials are dummies set for the whole session so boto3 never looks elsewhere.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _aws_test_credentials() -> Iterator[None]:
    """Dummy AWS credentials and region: no test may reach a real account."""
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
