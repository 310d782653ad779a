"""common.childenv: the explicit environment of every child process (no secrets, no stray credentials)."""

from __future__ import annotations

import subprocess
import sys

from common.childenv import AWS_CREDENTIAL_NAMES, aws_credentials, child_environment, passthrough_names

PARENT = {
    "PATH": "/usr/bin",
    "HOME": "/home/u",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONPATH": "/src",
    "SELFMAKER_LOG_LEVEL": "DEBUG",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "AKIA",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_SESSION_TOKEN": "token",
    "DB_PASSWORD": "hunter2",
    "GITHUB_TOKEN": "ghp",
    "DOCKER_HOST": "unix:///run/docker.sock",
    "HF_TOKEN": "hf",
    "HF_HOME": "/cache/hf",
}


def test_a_child_keeps_the_machine_and_aws_settings_only() -> None:
    env = child_environment({"SAGEMAKER_BIND_TO_PORT": "8080", "MODEL_SETTING": "x"}, parent=PARENT)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/src",
        "SELFMAKER_LOG_LEVEL": "DEBUG",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
        "SAGEMAKER_BIND_TO_PORT": "8080",
        "MODEL_SETTING": "x",
    }


def test_engine_clients_passthrough_and_credentials() -> None:
    engine = child_environment({}, engine_client=True, parent=PARENT)
    assert engine["DOCKER_HOST"] == "unix:///run/docker.sock" and "DB_PASSWORD" not in engine
    passed = child_environment({}, parent={**PARENT, "SELFMAKER_CHILD_ENV": "HF_*, GITHUB_TOKEN"})
    assert passed["HF_TOKEN"] == "hf" and passed["HF_HOME"] == "/cache/hf" and passed["GITHUB_TOKEN"] == "ghp"
    assert "DB_PASSWORD" not in passed and "AWS_SECRET_ACCESS_KEY" not in passed
    assert passthrough_names(" A ,B*,, ") == ("A", "B*")
    assert aws_credentials(PARENT) == {
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
    }
    assert set(aws_credentials(PARENT)) <= set(AWS_CREDENTIAL_NAMES)
    # the caller's values win over the parent's (the Model's Environment may set its own region)
    assert (
        child_environment({"AWS_DEFAULT_REGION": "us-west-2"}, parent=PARENT)["AWS_DEFAULT_REGION"]
        == "us-west-2"
    )


def test_a_python_child_starts_with_the_explicit_environment() -> None:
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_environment({"X_CHILD": "1"}, parent={**PARENT, "PATH": "/usr/bin:/bin"}),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert '"X_CHILD": "1"' in out.stdout and "hunter2" not in out.stdout
